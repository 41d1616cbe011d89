"""Shared helpers for benchmarks: machine description and result files.

Every benchmark compares against a baseline measured in the same run (a ratio), because
these machines are shared and noisy. ``write_results(name, figures, rows)`` writes
``bench/results/NAME.json`` and ``bench/results/NAME.md`` (a short table).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def write_results(name: str, figures: dict[str, Any], header: Sequence[str],
                  rows: Sequence[Sequence[Any]]) -> Path:
    """Write NAME.json (figures + machine + time) and NAME.md (a table); return the md path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    host = machine()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc: dict[str, Any] = {"benchmark": name, "when": when, "machine": host, "figures": figures}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    lines = [f"# {name}", "", f"Machine: {host['cpu']}, "
             f"{host['cores']} cores, Python {host['python']}; "
             f"{doc['when']}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    md = RESULTS / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
