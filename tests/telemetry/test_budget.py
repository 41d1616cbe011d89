"""The warm path's volume budget: errors, refusals and slow answers always; a deterministic
sample of the rest carrying its rate; per-logger throttling; truncation; the host budget;
every line not uploaded counted in /metrics (and still in the cold file)."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from imds_server.telemetry import LogPipeline, TelemetryConfig, TelemetryMetrics
from imds_server.telemetry._budget import WarmBudget, sampled, truncate
from imds_server.telemetry._jsonlog import Line, queued, render_access

from .conftest import access


def budget(**overrides: float) -> WarmBudget:
    settings: dict[str, float] = dict(level=logging.INFO, sample_rate=0.01, slow_seconds=0.005,
                                      logger_rate=10.0, logger_burst=5.0, max_line_bytes=4096,
                                      budget_lines=1_000_000, interval=120.0)
    settings.update(overrides)
    return WarmBudget(**settings)  # type: ignore[arg-type]


def test_errors_refusals_and_slow_answers_are_all_kept_the_rest_sampled() -> None:
    records = ([access(request_id=f"ok-{n}") for n in range(20_000)]
               + [access(request_id=f"e-{n}", status=503) for n in range(50)]
               + [access(request_id=f"r-{n}", status=403, refused="unknown-caller")
                  for n in range(50)]
               + [access(request_id=f"s-{n}", seconds=0.02) for n in range(50)]
               + [access(request_id=f"w-{n}", seconds=30.0, watch=True) for n in range(100)])
    batch = [queued(r) for r in records]
    lines = [render_access(r) + "\n" for r in records]
    b = budget()
    out, counts = b.choose(batch, lines, None, now=0.0)
    docs = [json.loads(line) for line in out]
    kept = {d["request_id"].split("-")[0] for d in docs if "sample_rate" not in d}
    assert kept == {"e", "r", "s"}
    assert sum(1 for d in docs if "sample_rate" not in d) == 150
    sampled_docs = [d for d in docs if "sample_rate" in d]
    assert {d["sample_rate"] for d in sampled_docs} == {0.01}
    assert 150 <= len(sampled_docs) <= 260  # ~1% of 20,100 (long polls are not "slow")
    # Deterministic: the same request ids, whoever decides, every time.
    again, _ = budget().choose(batch, lines, None, now=0.0)
    assert again == out
    assert all(sampled(d["request_id"], 0.01) for d in sampled_docs)
    assert counts.sampled_out == 20_100 - len(sampled_docs)
    assert counts.kept == len(out)


def test_component_lines_are_throttled_per_logger() -> None:
    b = budget(logger_rate=1.0, logger_burst=5.0)
    batch = [Line(logging.WARNING, json.dumps({"n": n}) + "\n", "imds_server.noisy")
             for n in range(20)]
    batch += [Line(logging.ERROR, json.dumps({"q": n}) + "\n", "imds_replica") for n in range(3)]
    batch += [Line(logging.DEBUG, "{}\n", "imds_replica")]  # under the warm level: not counted
    out, counts = b.choose(batch, [x.text for x in batch],
                           [x.level for x in batch], now=100.0)
    assert len(out) == 5 + 3
    assert counts.throttled == 15
    out, counts = b.choose(batch[:20], [x.text for x in batch[:20]], [logging.WARNING] * 20,
                           now=102.0)  # two seconds later: two more tokens
    assert (len(out), counts.throttled) == (2, 18)


def test_long_lines_are_truncated_not_dropped() -> None:
    line = json.dumps({"time": "t", "level": "error", "logger": "x", "message": "m" * 50_000,
                       "exc": "e" * 20_000}) + "\n"
    cut = truncate(line, 4096)
    assert len(cut.encode()) <= 4096
    doc = json.loads(cut)
    assert doc["truncated_bytes"] == len(line)
    assert doc["message"].startswith("mmm")
    assert doc["message"].endswith("...")
    out, counts = budget().choose([Line(logging.ERROR, line, "x")], [line], [logging.ERROR],
                                  now=0.0)
    assert len(out) == 1
    assert len(out[0].encode()) <= 4096
    assert counts.truncated == 1


def test_the_budgets_reserve_is_for_errors() -> None:
    b = budget(budget_lines=10, interval=60.0, budget_reserve=0.3, sample_rate=1.0)
    flood = [queued(access(request_id=f"ok-{n}")) for n in range(50)]
    refusals = [queued(access(request_id=f"r-{n}", status=429, refused="rate-limit"))
                for n in range(5)]
    errors = [queued(access(request_id=f"e-{n}", status=503)) for n in range(5)]
    component = [Line(logging.ERROR, '{"c":1}\n', "imds_replica"),
                 Line(logging.WARNING, '{"w":1}\n', "imds_replica")]
    batch: list[object] = [*flood, *refusals, *errors, *component]
    lines = [f'{{"n":{n}}}\n' for n in range(len(batch))]
    levels = [logging.INFO] * 60 + [logging.ERROR, logging.WARNING]
    out, counts = b.choose(batch, lines, levels, now=0.0)  # type: ignore[arg-type]
    # 7 of the 10 go to the first lines; the other 3 only to errors (5xx answers; a 429
    # refusal is not one).
    assert out == lines[:7] + lines[55:58]
    assert counts.over_budget == len(batch) - 10
    b = budget(budget_lines=10, interval=60.0, budget_reserve=0.0, sample_rate=1.0)
    out, _ = b.choose(batch, lines, levels, now=0.0)  # type: ignore[arg-type]
    assert out == lines[:10]  # no reserve: first come, first served
    b = budget(budget_lines=10, interval=60.0, budget_reserve=0.3, sample_rate=1.0)
    out, _ = b.choose(component, [x.text for x in component], [logging.ERROR, logging.WARNING],
                      now=0.0)
    assert len(out) == 2
    b.choose(flood, lines[:50], None, now=1.0)  # the interval's other 5 ... and only those
    out, _ = b.choose(component, [x.text for x in component], [logging.ERROR, logging.WARNING],
                      now=2.0)
    assert out == [component[0].text]  # an ERROR line takes a reserved slot, a WARNING not


def test_host_budget_per_interval() -> None:
    b = budget(budget_lines=10, interval=60.0)
    batch = [queued(access(request_id=f"e-{n}", status=500)) for n in range(25)]
    lines = [f'{{"n":{n}}}\n' for n in range(25)]
    out, counts = b.choose(batch, lines, None, now=0.0)
    assert (len(out), counts.over_budget) == (10, 15)
    out, counts = b.choose(batch, lines, None, now=30.0)
    assert (len(out), counts.over_budget) == (0, 25)
    out, _ = b.choose(batch, lines, None, now=61.0)  # a new interval
    assert len(out) == 10


def test_pipeline_uploads_the_budgeted_lines_keeps_all_locally_and_counts(tmp_path: Path
                                                                          ) -> None:
    config = TelemetryConfig.from_mapping(
        {"warm": {"collector_url": "http://127.0.0.1:9", "sample_rate": 0.1,
                  "logger_burst": 2, "logger_rate": 0.001}}, cluster="c1", machine="m1")
    assert config.warm.sample_rate == 0.1
    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(config, tmp_path / "logs", metrics)
    pipeline.start()
    try:
        for n in range(1000):
            pipeline.access(access(request_id=f"r-{n}", status=200 if n % 10 else 500))
        for n in range(5):
            logging.getLogger("imds_server.chatty").warning("again %d", n)
        pipeline.flush()
    finally:
        pipeline.stop()
    assert pipeline.warm is not None
    spooled = [json.loads(line) for b in pipeline.warm.spool.pending()
               for line in gzip.decompress(b.path.read_bytes()).decode().splitlines()]
    errors = [d for d in spooled if d.get("status") == 500]
    sampled_ok = [d for d in spooled if d.get("status") == 200]
    chatty = [d for d in spooled if d.get("logger") == "imds_server.chatty"]
    assert len(errors) == 100
    assert all(d["sample_rate"] == 0.1 for d in sampled_ok)
    assert len(sampled_ok) == sum(1 for n in range(1000) if n % 10
                                  and sampled(f"r-{n}", 0.1))
    assert len(chatty) == 2
    cold = (tmp_path / "logs" / "imds.log").read_text().splitlines()
    assert len(cold) == 1005  # every line kept locally
    value = metrics.registry.get_sample_value
    assert value("imds_telemetry_warm_sampled_out_lines_total") == 900 - len(sampled_ok)
    assert value("imds_telemetry_warm_dropped_lines_total", {"reason": "throttled"}) == 3
    assert value("imds_telemetry_warm_dropped_lines_total", {"reason": "over-budget"}) == 0
    assert value("imds_telemetry_warm_truncated_lines_total") == 0


def test_bad_budget_settings_name_the_key() -> None:
    import pytest

    from imds_replica import ConfigError

    for table, key in (({"sample_rate": 1.5}, "telemetry.warm.sample_rate"),
                       ({"max_line_bytes": 10}, "telemetry.warm.max_line_bytes"),
                       ({"budget_lines": 0}, "telemetry.warm.budget_lines"),
                       ({"budget_reserve": 1.5}, "telemetry.warm.budget_reserve")):
        with pytest.raises(ConfigError) as caught:
            TelemetryConfig.from_mapping({"warm": table})
        assert caught.value.key == key
