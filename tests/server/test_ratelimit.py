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


def test_table_is_bounded_when_keys_come_faster_than_buckets_refill() -> None:
    # Thousands of distinct strangers within one refill time: no bucket is full again yet,
    # so sweeping the full ones frees nothing. The table grew without bound, and every
    # new key swept the whole table again (quadratic work on the accept path).
    buckets = TokenBuckets(2, 10, max_keys=1000)
    for i in range(5000):
        assert buckets.take(f"10.0.{i // 256}.{i % 256}", 0.001 * i) == 0.0
    assert len(buckets._buckets) <= 1000
    assert buckets.sweeps <= 10  # amortised: one sweep per several hundred new keys


def test_a_key_over_its_limit_stays_limited_while_others_come_and_go() -> None:
    buckets = TokenBuckets(1, 1, max_keys=100)
    assert buckets.take("flooder", 0.0) == 0.0
    for i in range(40):  # fewer newcomers than the table holds: nothing evicted
        buckets.take(f"other{i}", 0.0)
    assert buckets.take("flooder", 0.0) > 0
