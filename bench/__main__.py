"""Run every benchmark: ``python -m bench [NAME ...]`` (``make bench``).

Each ``bench/bench_NAME.py`` defines ``main() -> None`` that measures, compares against a
baseline in the same run, and writes ``bench/results/NAME.{json,md}``.

With more than one name, each benchmark runs in a fresh interpreter of its own: one
benchmark's heap, frozen objects and collector state must not slow the next (replay of
1M events measured 2.33x its raw loop after seven other benchmarks in one process, 1.74x
alone on the same quiet machine minutes later). A failing benchmark does not stop the
others; the exit status says whether any failed.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)])
                   if m.name.startswith("bench_"))
    chosen = argv or names
    unknown = set(chosen) - set(names)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(names)}")
        return 2
    if len(chosen) == 1:
        importlib.import_module(f"bench.bench_{chosen[0]}").main()
        return 0
    failed = []
    for name in chosen:
        print(f"== bench {name}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bench", name], cwd=here.parent,
                              check=False)
        if done.returncode:
            failed.append(name)
        print(f"== bench {name} {'FAILED' if done.returncode else 'done'} in "
              f"{time.perf_counter() - started:.1f}s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
