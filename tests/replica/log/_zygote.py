"""A fork server for the crash tests: forks writer processes that the test kills with -9.

Starting Python, trio and imds_replica costs a few hundred milliseconds; forking this
already-initialized, single-threaded process costs a few. The test talks to it over
stdin/stdout (one command or report per line; lines are shorter than PIPE_BUF, so those of
the zygote and of its children never interleave within a line):

    spawn DIR MODE START SEED  ->  "pid N"; the child prints "ready ..." then "ack B" for
                                   every batch B after ``Replica.submit`` returned
    wait N                     ->  "dead N STATUS" once the child is gone (all its lines
                                   are in the pipe before this one)
    quit

Modes: ``normal`` (4 submitters), ``pipelined`` (4 submitters through ``append_nowait``,
each with a random window of up to 16 batches in flight, acknowledging a window's batches
once its last receipt is done), ``maint`` (the same plus compaction and snapshots in a
tight loop, so kills land inside them), ``fsize`` (RLIMIT_FSIZE set low: writes until the
"disk" is full and reports the error), ``plain`` (one submitter, until the storage fails).
"""

from __future__ import annotations

import os
import random
import resource
import signal
import sys
import traceback

import trio

from imds_replica import Checkpoint, Event, StorageError, open_replica
from imds_replica._log import FileLog

SUBMITTERS = 4
SHARED_KEYS = 10


def batch_events(b: int) -> list[Event]:
    """Batch ``b``'s events: 1..5 of its own keys plus one write of a shared key."""
    source = f"w{b % SUBMITTERS}"
    own = [Event(source, ("b", str(b), str(i)), b, {"b": b, "i": i, "pad": "x" * (b % 37)})
           for i in range(1 + b % 5)]
    return [*own, Event(source, ("shared", str(b % SHARED_KEYS)), b, b)]


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


async def writer(directory: str, mode: str, start: int, seed: int) -> None:
    rng = random.Random(seed)
    log = FileLog(directory, segment_bytes=16384, snapshot_every=rng.choice([50, 300, 2000]))
    async with open_replica(log) as replica:
        say(f"ready {replica.recovery.events}")
        submitters = 1 if mode in ("fsize", "plain") else SUBMITTERS

        async def submit(w: int) -> None:
            b = start + w
            while True:
                await replica.submit(batch_events(b), checkpoint=Checkpoint(f"w{w}", b))
                say(f"ack {b}")
                b += SUBMITTERS

        async def pipelined(w: int) -> None:
            b = start + w
            while True:
                window = []
                for _ in range(rng.randint(1, 16)):
                    window.append((b, log.append_nowait(
                        batch_events(b), checkpoint=Checkpoint(f"w{w}", b))))
                    b += SUBMITTERS
                await window[-1][1].wait()
                for acked, receipt in window:
                    receipt.result()  # receipts complete in order: raises if not done
                    say(f"ack {acked}")

        async def maintain() -> None:
            while True:
                await log.compact()
                await log.snapshot()
                await trio.sleep(rng.random() * 0.003)

        async with trio.open_nursery() as nursery:
            for w in range(submitters):
                nursery.start_soon(pipelined if mode == "pipelined" else submit, w)
            if mode == "maint":
                nursery.start_soon(maintain)


def child(directory: str, mode: str, start: int, seed: int) -> None:
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))
    try:
        trio.run(writer, directory, mode, start, seed)
    except BaseException as exc:
        # A storage failure fails the batch that hit it (a StorageError out of submit:
        # the log itself lives on); report it and stop. Anything else is a bug.
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, StorageError):
            say(f"storage-error {leaf}")
            os._exit(0)
        for line in traceback.format_exc().splitlines():
            say(f"error {line}")
        os._exit(1)
    os._exit(0)


def main() -> None:
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "spawn":
            pid = os.fork()
            if pid == 0:
                child(command[1], command[2], int(command[3]), int(command[4]))
            say(f"pid {pid}")
        elif command[0] == "wait":
            pid, status = os.waitpid(int(command[1]), 0)
            say(f"dead {pid} {status}")
        elif command[0] == "quit":
            return


if __name__ == "__main__":
    main()
