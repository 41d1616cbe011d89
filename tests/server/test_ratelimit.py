from __future__ import annotations

from imds_server import TokenBuckets


def test_bucket_refills_at_rate() -> None:
    buckets = TokenBuckets(5)
    assert [buckets.take("vm", 0.0) for _ in range(5)] == [0.0] * 5
    wait = buckets.take("vm", 0.0)
    assert abs(wait - 0.2) < 1e-9
    assert TokenBuckets.retry_after(wait) == 1
    assert buckets.take("vm", 0.2) == 0.0
    assert buckets.take("other", 0.0) == 0.0


def test_disabled_and_burst() -> None:
    assert all(TokenBuckets(0).take("vm", 0.0) == 0.0 for _ in range(1000))
    burst = TokenBuckets(1, 3)
    assert [burst.take("vm", 0.0) == 0.0 for _ in range(4)] == [True, True, True, False]


def test_table_is_bounded() -> None:
    buckets = TokenBuckets(10, max_keys=10)
    for i in range(100):
        buckets.take(f"vm{i}", float(i))
    assert len(buckets._buckets) <= 11
