"""The kill -9 harness: drive the zygote, kill writers at random moments, check the log."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imds_replica._log import verify_log
from imds_replica._log._frame import DEFAULT_MAX_RECORD_BYTES, EventTuple
from imds_replica._log._replay import Reducer, recover_directory
from imds_replica._log._segment import META_NAME

from ._zygote import SHARED_KEYS, SUBMITTERS, batch_events

ZYGOTE = Path(__file__).with_name("_zygote.py")
MAX = DEFAULT_MAX_RECORD_BYTES


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("eof")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def until(self, prefix: str | tuple[str, ...], seen: list[str],
              timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            if line == "eof":
                raise AssertionError(f"zygote died; output so far: {seen[-20:]}")
            if line.startswith(prefix):
                return line
            seen.append(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        try:
            self.send("quit")
        finally:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
            self._reader.join(timeout=10)
            self.proc.stdout.close()


class CountingReducer(Reducer):
    """Also counts how often each batch's own keys are stored (each must be once)."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: defaultdict[tuple[str, ...], int] = defaultdict(int)

    def add_events(self, events: Iterable[EventTuple]) -> None:
        events = list(events)
        for t in events:
            if t[1][0] == "b":
                self.stored[t[1]] += 1
        super().add_events(events)


def check_log(directory: Path, acked: set[int], last_ack: dict[int, int],
              verified: set[int]) -> dict[str, Any]:
    """Everything acknowledged is there exactly, once, whole; raise AssertionError if not.

    The contents of batches in ``verified`` are taken as checked (pass an empty set for a
    full check); the newly checked ones are added to it.
    """
    if not (directory / META_NAME).exists():  # killed while creating the directory
        assert not acked
        return {"batches": 0, "notes": ()}
    # The offline check agrees: a kill leaves at most a torn final group, never damage
    # (compacted generations and every earlier group are sealed).
    report = verify_log(directory)
    assert report.ok, report.problems
    # The path the next start takes (snapshot + tail)...
    rec = recover_directory(directory, writable=False, fsync=False, max_record=MAX)
    best = rec.reducer.best
    # ...and a full replay without snapshots, counting stored copies.
    full = CountingReducer()
    recover_directory(directory, writable=False, fsync=False, max_record=MAX,
                      use_snapshots=False, reducer=full)
    assert full.best == best, "snapshot + tail disagrees with a full replay"
    dup = [k for k, n in full.stored.items() if n > 1]
    assert not dup, f"registers stored more than once: {dup[:5]}"
    present = {int(k[1]) for k in best if k[0] == "b"}
    missing = sorted(acked - present)
    assert not missing, f"acknowledged batches missing: {missing[:10]}"
    for b in present - verified:  # all-or-nothing, and exactly what was written
        for event in batch_events(b):
            t = best.get(event.key)
            if event.key[0] == "b":
                assert t is not None, f"batch {b} partly applied: {event.key} missing"
                assert (t[0], t[2], t[4]) == (event.source, event.version, event.encoded), b
    for k in range(SHARED_KEYS):
        newest = max((b for b in acked if b % SHARED_KEYS == k), default=-1)
        t = best.get(("shared", str(k)))
        assert newest < 0 or (t is not None and t[2] >= newest), f"shared {k} went back"
    verified |= present
    for w, b in last_ack.items():
        cursor = rec.reducer.checkpoints.get(f"w{w}")
        assert cursor is not None, f"no cursor of w{w}"
        assert cursor >= b, f"cursor of w{w}: {cursor} < acked {b}"
    return {"batches": len(present), "notes": rec.notes}


def kill_loop(directory: Path, kills: int, *, mode: str, seed: int,
              max_delay: float = 0.12) -> dict[str, int]:
    """Spawn, kill -9 at a random moment, check; ``kills`` times. Returns counters:
    ``ack_waits`` cycles waited for a first acknowledgement before the kill, each of whose
    batch ids is new, so ``acked >= ack_waits`` holds on any machine however loaded."""
    rng = random.Random(seed)
    zygote = Zygote()
    acked: set[int] = set()
    last_ack: dict[int, int] = {}
    verified: set[int] = set()
    stats = {"kills": 0, "acked": 0, "truncations": 0, "exited": 0, "ack_waits": 0}
    try:
        for cycle in range(kills):
            seen: list[str] = []
            start = (cycle + 1) * 1_000_000  # batch ids never repeat across restarts
            zygote.send(f"spawn {directory} {mode} {start} {rng.randrange(2**32)}")
            pid = int(zygote.until("pid ", seen).split()[1])
            if rng.random() < 0.5:
                # Half the kills land while appending (after recovery and a first
                # acknowledgement), so that the writers get work done however slow start-up
                # is on a busy machine; the other half land anywhere, recovery included.
                zygote.until("ready ", seen)
                seen.append(zygote.until("ack ", seen))
                stats["ack_waits"] += 1
            time.sleep(rng.random() * max_delay)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            zygote.send(f"wait {pid}")
            dead = zygote.until(f"dead {pid} ", seen)
            status = int(dead.split()[2])
            errors = [line for line in seen if line.startswith(("error", "storage-error"))]
            assert not errors, "\n".join(errors)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                stats["kills"] += 1
            else:
                stats["exited"] += 1
            for line in seen:
                if line.startswith("ack "):
                    b = int(line.split()[1])
                    acked.add(b)
                    w = (b - start) % SUBMITTERS
                    last_ack[w] = max(last_ack.get(w, -1), b)
            full_check = cycle % 25 == 24 or cycle == kills - 1
            verified = set() if full_check else verified
            result = check_log(directory, acked, last_ack, verified)
            stats["truncations"] += any("torn tail" in n for n in result["notes"])
        stats["acked"] = len(acked)
    finally:
        zygote.close()
    return stats
