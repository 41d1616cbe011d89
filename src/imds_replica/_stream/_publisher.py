"""``Publisher``: the regional side, keeping every subject equal to its register's winner.

The stream keeps the last *written* message per subject, so only a writer that compares
and sets keeps it equal to the last-writer-wins winner. For each subject the publisher
reads the current message, publishes only if the new event wins over it
(``supersedes``), and publishes with ``Nats-Expected-Last-Subject-Sequence`` set to the
sequence it read: if another publisher wrote in between, the server refuses (10071) and
the subject is read and compared again. ``Nats-Msg-Id`` (a digest of subject and payload)
makes a retried publish idempotent within the stream's duplicate window.

Events for one subject are coalesced first (only the winner is sent); subjects go in
windows of ``window``, each window read in one pipelined round and published in another.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import attrs

from .._event import Event
from .._merge import merge, supersedes
from ._bridge import Connection
from ._transport import WRONG_LAST_SEQUENCE, ConnectOptions
from ._wire import WireError, check_cluster, decode_event, encode_event, stream_name, subject

#: Compare-and-set rounds per subject before its event is refused as contended.
MAX_ROUNDS = 8


@attrs.frozen
class PublishReport:
    published: int  # written to the stream
    superseded: int  # lost to the subject's current event, or to another in the same input
    refused: int  # could not be published (the errors say why)
    errors: tuple[str, ...] = ()

    def __add__(self, other: PublishReport) -> PublishReport:
        return PublishReport(self.published + other.published,
                             self.superseded + other.superseded,
                             self.refused + other.refused, self.errors + other.errors)


def message_id(subject_name: str, payload: bytes) -> str:
    return hashlib.blake2b(subject_name.encode() + b"\0" + payload, digest_size=16).hexdigest()


class Publisher:
    """Publishes events into cluster ``cluster``'s stream with compare-and-set.

    Use ``async with Publisher.connect(options, cluster=...) as publisher`` or wrap an open
    ``Connection``; ``host=None`` publishes to the cluster-wide ``_all`` subjects.
    """

    def __init__(self, conn: Connection, *, cluster: str, window: int = 1000) -> None:
        self.conn = conn
        self.cluster = check_cluster(cluster)
        self.stream = stream_name(cluster)
        self.window = window

    @classmethod
    @asynccontextmanager
    async def connect(cls, options: ConnectOptions, *, cluster: str,
                      window: int = 1000) -> AsyncIterator[Publisher]:
        conn = await Connection.open(options, publish_window=window,
                                     give_up_after=options.first_connect_bound)
        try:
            yield cls(conn, cluster=cluster, window=window)
        finally:
            await conn.aclose()

    async def publish(self, events: Iterable[Event], *, host: str | None) -> PublishReport:
        """Publish ``events`` for ``host`` (or all hosts); returns what happened to each."""
        winners: dict[str, Event] = {}
        superseded = 0
        for event in events:
            name = subject(self.cluster, host, event.source, event.key)
            held = winners.get(name)
            winner = merge(held, event)
            assert winner is not None
            if held is not None:
                superseded += 1
            winners[name] = winner
        report = PublishReport(0, superseded, 0)
        items = list(winners.items())
        for start in range(0, len(items), self.window):
            report += await self._window(dict(items[start:start + self.window]))
        return report

    async def _window(self, todo: dict[str, Event]) -> PublishReport:
        published = superseded = refused = 0
        errors: list[str] = []
        for _ in range(MAX_ROUNDS):
            if not todo:
                break
            names = list(todo)
            current = await self.conn.last_messages(self.stream, names)
            batch: list[tuple[str, bytes, dict[str, str] | None]] = []
            for name, held in zip(names, current, strict=True):
                event = todo[name]
                if held is not None:
                    seq, payload = held
                    try:
                        old: Event | None = decode_event(name, payload)
                    except WireError:
                        old = None  # garbage under the subject: any event beats it
                    if old is not None and not supersedes(event, old):
                        superseded += 1
                        del todo[name]
                        continue
                else:
                    seq = 0
                payload = encode_event(event)
                batch.append((name, payload, {
                    "Nats-Expected-Last-Subject-Sequence": str(seq),
                    "Nats-Msg-Id": message_id(name, payload)}))
            results = await self.conn.publish_many(batch)
            for (name, _, _), result in zip(batch, results, strict=True):
                if result.seq is not None:
                    published += 1
                    del todo[name]
                elif result.code == WRONG_LAST_SEQUENCE:
                    continue  # someone wrote in between: read and compare again
                else:
                    refused += 1
                    errors.append(f"{name}: {result.error}")
                    del todo[name]
        for name in todo:
            refused += 1
            errors.append(f"{name}: still contended after {MAX_ROUNDS} compare-and-set rounds")
        return PublishReport(published, superseded, refused, tuple(errors))
