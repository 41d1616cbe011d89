from __future__ import annotations

import pytest

from imds_replica import ClientError
from imds_server.testmode import FaultRule, FaultTable


def test_a_rule_matches_by_glob_and_vm() -> None:
    rule = FaultRule.from_mapping({"path": "/metadata/instance*", "vm": "v1", "status": 410})
    assert rule.matches("/metadata/instance/compute/name", "v1")
    assert not rule.matches("/metadata/instance", "v2")
    assert not rule.matches("/metadata/scheduledevents", "v1")
    assert FaultRule(status=500).matches("/anything", None)


def test_count_and_duration_end_a_rule() -> None:
    table = FaultTable()
    table.add(FaultRule(status=429, count=2), now=0.0)
    table.add(FaultRule(path="/metadata/versions", status=503, retry_after=7, duration=30),
              now=0.0)
    assert [table.match("/metadata/instance", None, 1.0) is not None for _ in range(3)] == \
        [True, True, False]
    hit = table.match("/metadata/versions", None, 29.9)
    assert hit is not None
    assert (hit.status, hit.retry_after) == (503, 7)
    assert table.match("/metadata/versions", None, 30.0) is None
    assert table.listing(30.0) == []


def test_the_newest_matching_rule_wins_and_rules_can_be_removed() -> None:
    table = FaultTable()
    long = table.add(FaultRule(status=410, duration=60), now=0.0)
    table.add(FaultRule(delay=0.5, count=1), now=1.0)
    first = table.match("/x", None, 2.0)
    assert first is not None
    assert first.delay == 0.5
    second = table.match("/x", None, 2.0)
    assert second is not None
    assert second.status == 410
    assert table.remove(long) == 1
    assert table.match("/x", None, 3.0) is None


@pytest.mark.parametrize(("data", "message"), [
    ({"status": 418}, "one of [404, 410, 429, 500, 503]"),
    ({"status": 410, "drop": True}, "either forces a status or drops"),
    ({"path": "/x"}, "needs a delay, a status or drop"),
    ({"status": 410, "count": 0}, "count must be >= 1"),
    ({"status": "410"}, "status must be int, not a string"),
    ({"delay": True}, "delay must be int or number, not a boolean"),
    ({"status": 410, "colour": "red"}, "unknown fault field 'colour'"),
    ({"drop": True, "retry-after": 3}, "retry-after needs a status"),
])
def test_bad_rules_are_refused_with_the_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises(ClientError) as info:
        FaultRule.from_mapping(data)
    assert message in info.value.message
