"""A 1,000-host fleet (``imds_replica.testing._fleet``): convergence after a partition heals.

Each run simulates 1,000 hosts (the real ``open_replica``/``Replica.submit``/``View`` over
a ``MemoryLog``) and 4 sources publishing 50 events each over 60 simulated seconds, with 5%
message loss, 2% duplicates, jittered delays, 30% of the hosts partitioned from t=10s to
t=40s, 10% of the hosts crashing once, and skewed source clocks. Figures per run:

* time-to-converge after the heal (simulated seconds, p50/p99/max over partitioned hosts):
  until a host has durably caught up on everything published before the heal. Mostly the
  sources' redelivery backoff (ack_wait 1s doubling to 8s) plus delays.
* messages per event (all kinds, lost ones included) and per host-event (2.0 = one push
  and one acknowledgement per host per event).
* wall time of the whole simulation.

Baselines measured in the same run: the same fleet and workload with no faults (wall time
and messages: the cost of the faults), and a plain-dict LWW apply loop over the same number
of host-events (the cost of the whole replica stack plus the simulated network per
host-event, relative to the bare merge).
"""

from __future__ import annotations

import time

import attrs

from imds_replica import Event, HybridClock
from imds_replica.testing._fleet import EPOCH_MS, FleetConfig, FleetReport, simulate_fleet

from ._common import write_results

FLEET = FleetConfig(hosts=1000, sources=4, keys=200, events_per_source=50,
                    publish_window=60.0, partition_fraction=0.3, partition_start=10.0,
                    partition_duration=30.0, crash_fraction=0.1, loss=0.05, duplicate=0.02)
SEEDS = (1, 2, 3)


def _dict_apply_seconds(hosts: int, events: int, keys: int) -> float:
    """A plain dict per host, LWW by (version, source, digest): the bare merge's cost."""
    clock = HybridClock()
    stream = [Event(f"src{i % 4}", ("vms", f"vm{i % keys:04d}", "compute", "tagsList"),
                    clock.now(EPOCH_MS + i * 300), {"tag": f"v{i % 4}"}) for i in range(events)]
    started = time.perf_counter()
    for _ in range(hosts):
        registers: dict[tuple[str, ...], Event] = {}
        get = registers.get
        for e in stream:
            old = get(e.key)
            if old is None or (e.version, e.source, e.digest) > (old.version, old.source,
                                                                  old.digest):
                registers[e.key] = e
    return time.perf_counter() - started


def _row(label: str, r: FleetReport) -> list[object]:
    def s(x: float | None) -> object:
        return "-" if x is None else round(x, 2)
    return [label, r.config.seed, r.events, s(r.converge_p50), s(r.converge_p99),
            s(r.converge_max), round(r.messages_per_event, 1),
            round(r.messages_per_host_event, 3), r.crashes, round(r.wall_seconds, 2)]


def main() -> None:
    runs = []
    for seed in SEEDS:
        report = simulate_fleet(attrs.evolve(FLEET, seed=seed))
        print("  faults   ", report.summary(), flush=True)
        runs.append(report)
    clean = simulate_fleet(attrs.evolve(FLEET, seed=SEEDS[0]).without_faults())
    print("  no faults", clean.summary(), flush=True)
    host_events = clean.events * FLEET.hosts
    dict_seconds = _dict_apply_seconds(FLEET.hosts, clean.events, FLEET.keys)

    main_run = runs[0]
    p50s = sorted(r.converge_p50 or 0.0 for r in runs)
    p99s = sorted(r.converge_p99 or 0.0 for r in runs)
    figures = {
        "hosts": FLEET.hosts,
        "sources": FLEET.sources,
        "events": main_run.events,
        "seeds": list(SEEDS),
        "converge_p50_seconds": main_run.converge_p50,
        "converge_p99_seconds": main_run.converge_p99,
        "converge_max_seconds": main_run.converge_max,
        "converge_p50_seconds_median_of_seeds": p50s[len(p50s) // 2],
        "converge_p99_seconds_median_of_seeds": p99s[len(p99s) // 2],
        "messages_per_event": main_run.messages_per_event,
        "messages_per_host_event": main_run.messages_per_host_event,
        "messages": dict(main_run.messages),
        "wall_seconds": main_run.wall_seconds,
        "wall_seconds_per_seed": [r.wall_seconds for r in runs],
        "baseline_no_faults_wall_seconds": clean.wall_seconds,
        "baseline_no_faults_messages_per_host_event": clean.messages_per_host_event,
        "wall_ratio_faults_vs_no_faults": main_run.wall_seconds / clean.wall_seconds,
        "messages_ratio_faults_vs_no_faults":
            main_run.messages_per_event / clean.messages_per_event,
        "baseline_dict_apply_us_per_host_event": dict_seconds / host_events * 1e6,
        "fleet_us_per_host_event_no_faults": clean.wall_seconds / host_events * 1e6,
        "ratio_fleet_vs_dict_apply_per_host_event": clean.wall_seconds / dict_seconds,
        "trace_digest": main_run.trace_digest,
        "config": attrs.asdict(main_run.config),
    }
    header = ["run", "seed", "events", "converge p50 s", "converge p99 s", "converge max s",
              "msgs/event", "msgs/host-event", "crashes", "wall s"]
    rows = [_row("faults", r) for r in runs] + [_row("no faults (baseline)", clean)]
    rows.append(["plain-dict LWW apply (baseline)", "-", clean.events, "-", "-", "-", "-",
                 "-", "-", round(dict_seconds, 3)])
    md = write_results("fleet", figures, header, rows)
    print(f"  fleet: p50 {main_run.converge_p50:.2f}s p99 {main_run.converge_p99:.2f}s "
          f"after heal; {main_run.messages_per_event:.0f} msgs/event; "
          f"wall {main_run.wall_seconds:.1f}s vs {clean.wall_seconds:.1f}s without faults "
          f"(x{figures['wall_ratio_faults_vs_no_faults']:.2f}); "
          f"{figures['fleet_us_per_host_event_no_faults']:.1f}us per host-event vs "
          f"{figures['baseline_dict_apply_us_per_host_event']:.2f}us plain dict "
          f"(x{figures['ratio_fleet_vs_dict_apply_per_host_event']:.0f}); {md}")
