"""The change fan-out (``_watch``): parked watchers answered on their own connections by one
task after a change, over real sockets."""

from __future__ import annotations

import socket
from typing import Any

import httptools
import pytest
import trio
import trio.testing

from imds_replica import Event
from imds_server import AccessRecord, Server, _watch
from imds_server._demo import network

from .conftest import (
    CALLER_A,
    MD,
    VM_A,
    Reply,
    V,
    _Collect,
    connect,
    make_config,
    request_bytes,
    running,
    wait_until,
)

NAME = f"/metadata/instance/compute/name?api-version={V}&format=text"
WATCH = f"{NAME}&wait_for_change=true&timeout_sec=300"
NETWORK = f"/metadata/instance/network?api-version={V}&wait_for_change=true&timeout_sec=300"


class Client:
    """A keep-alive connection that reads one answer at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.collect = _Collect()
        self.parser = httptools.HttpResponseParser(self.collect)
        self.collect.parser = self.parser
        self.head = False

    @classmethod
    async def open(cls, server: Server, source: str = CALLER_A) -> Client:
        return cls(await connect(server.vm_address, source))

    async def send(self, target: str, method: str = "GET",
                   headers: dict[str, str] | None = None) -> None:
        self.head = method == "HEAD"
        await self.stream.send_all(request_bytes(method, target, {**MD, **(headers or {})},
                                                 close=False))

    async def answer(self, seconds: float = 10) -> Reply:
        with trio.fail_after(seconds):
            while not self.collect.replies:
                chunk = await self.stream.receive_some(65536)
                assert chunk, "closed before an answer"
                if self.head:  # no body follows a HEAD answer: the parser cannot know that
                    head = chunk.decode("latin-1").split("\r\n")
                    fields = dict(line.lower().split(": ", 1) for line in head[1:] if line)
                    assert chunk.endswith(b"\r\n\r\n")
                    return Reply(int(head[0].split(" ")[1]), fields, b"")
                self.parser.feed_data(chunk)
        return self.collect.replies.pop(0)


class Records:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def request(self, record: AccessRecord) -> None:
        self.records.append(record)


async def _park(server: Server, count: int, target: str = WATCH, **kwargs: Any
                ) -> list[Client]:
    clients = []
    for _ in range(count):
        client = await Client.open(server)
        await client.send(target, **kwargs)
        clients.append(client)
    return clients


async def _rename(server: Server, name: str, version: int) -> None:
    assert server.replica is not None
    await server.replica.submit([Event("fabric", ("vms", VM_A, "compute", "name"), version,
                                       name)])


async def test_a_change_answers_every_watcher_on_its_own_connection() -> None:
    records = Records()
    config = make_config(rate_limit=0.0, max_watchers_per_vm=100)
    async with running(config, observer=records) as server:
        clients = await _park(server, 40)
        await wait_until(lambda: server.statistics().parked_watchers == 40)
        before = server.clock()
        await _rename(server, "renamed", 50)
        answers = [await client.answer() for client in clients]
        assert [(a.status, a.body) for a in answers] == [(200, b"renamed")] * 40
        assert len({a.headers["etag"] for a in answers}) == 1
        assert server.watches.fanned_out == 40  # sent by the fan-out, not each task
        await wait_until(lambda: server.statistics().parked_watchers == 0)
        # Each connection goes on as a keep-alive connection.
        for client in clients:
            await client.send(NAME)
            assert (await client.answer()).body == b"renamed"
        for client in clients:
            await client.stream.aclose()
        assert server.statistics().watchers_disconnected == 0
    watched = [r for r in records.records if r.watch]
    assert len(watched) == 40
    assert all(r.status == 200 and r.bytes == len(b"renamed") for r in watched)
    # The record's time is the request's start, its seconds end when the answer was sent.
    assert all(r.time < before <= r.time + r.seconds for r in watched)


def _count_resumes(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The target of every answer the server computes for a parked watcher, in order."""
    calls: list[str] = []
    resume = server.api.resume

    def counting(park: Any, now: float, timed_out: bool) -> Any:
        calls.append(park.request.target)
        return resume(park, now, timed_out)

    monkeypatch.setattr(server.api, "resume", counting)
    return calls


async def test_each_distinct_answer_is_computed_once(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    config = make_config(rate_limit=0.0, max_watchers_per_vm=100)
    async with running(config) as server:
        calls = _count_resumes(server, monkeypatch)
        names = await _park(server, 20)
        heads = await _park(server, 5, method="HEAD")
        whole = await _park(server, 10, f"/metadata/instance?api-version={V}"
                                        "&wait_for_change=true&timeout_sec=300")
        await wait_until(lambda: server.statistics().parked_watchers == 35)
        await _rename(server, "renamed", 50)
        for client in names:
            assert (await client.answer()).body == b"renamed"
        for client in heads:
            head = await client.answer()
            assert (head.status, head.headers["content-length"]) == (200, "7")
        for client in whole:
            assert (await client.answer()).json()["compute"]["name"] == "renamed"
        # One per target (GET and HEAD of one target share theirs); none per watcher.
        assert sorted(set(calls)) == sorted(calls)
        assert len(calls) == 2
        for client in names + heads + whole:
            await client.stream.aclose()


async def test_watchers_whose_answer_did_not_change_stay_parked_unwoken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(rate_limit=0.0, max_watchers_per_vm=100)
    async with running(config) as server:
        calls = _count_resumes(server, monkeypatch)
        names = await _park(server, 5)
        networks = await _park(server, 5, NETWORK)
        await wait_until(lambda: server.statistics().parked_watchers == 10)
        await _rename(server, "renamed", 50)
        for client in names:
            assert (await client.answer()).body == b"renamed"
        await wait_until(lambda: server.statistics().parked_watchers == 5)
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().parked_watchers == 5
        # The fan-out looked once for all five; none of their tasks ran to look again.
        assert calls.count(NETWORK) == 1
        assert server.replica is not None
        await server.replica.submit([Event("fabric", ("vms", VM_A, "network"), 50,
                                           network(7))])
        for client in networks:
            assert (await client.answer()).json() == network(7)
        for client in names + networks:
            await client.stream.aclose()


async def test_a_change_during_the_fan_out_is_what_the_rest_get(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The fan-out takes a checkpoint every BATCH sends; a change meanwhile must not leave
    # the remaining watchers an answer older than the view.
    monkeypatch.setattr(_watch, "BATCH", 2)
    config = make_config(rate_limit=0.0, max_watchers_per_vm=100)
    async with running(config) as server:
        assert server.replica is not None
        view = server.replica.view
        real = _watch.checkpoint
        changed = []

        async def checkpoint() -> None:
            if not changed:
                changed.append(True)
                view.apply(Event("fabric", ("vms", VM_A, "compute", "name"), 60, "second"))
            await real()

        monkeypatch.setattr(_watch, "checkpoint", checkpoint)
        clients = await _park(server, 6)
        await wait_until(lambda: server.statistics().parked_watchers == 6)
        await _rename(server, "first", 50)
        bodies = [(await client.answer()).body for client in clients]
        assert sorted(bodies) == [b"first"] * 2 + [b"second"] * 4
        await wait_until(lambda: server.statistics().parked_watchers == 0)
        assert server.watches.fanned_out == 6  # one answer each
        for client in clients:
            await client.stream.aclose()


async def test_answered_watchers_are_woken_a_batch_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Their tasks' work (access record, next request) must not run all in one scheduler
    # pass: between two checkpoints of the fan-out, at most BATCH of them are made runnable.
    monkeypatch.setattr(_watch, "BATCH", 3)
    woken_between: list[int] = [0]
    real_wake, real_checkpoint = _watch._wake, _watch.checkpoint

    def wake(watcher: Any) -> None:
        if watcher.task is not None:
            woken_between[-1] += 1
        real_wake(watcher)

    async def checkpoint() -> None:
        woken_between.append(0)
        await real_checkpoint()

    monkeypatch.setattr(_watch, "_wake", wake)
    monkeypatch.setattr(_watch, "checkpoint", checkpoint)
    config = make_config(rate_limit=0.0, max_watchers_per_vm=100)
    async with running(config) as server:
        clients = await _park(server, 10)
        await wait_until(lambda: server.statistics().parked_watchers == 10)
        await _rename(server, "renamed", 50)
        assert [(await client.answer()).body for client in clients] == [b"renamed"] * 10
        await wait_until(lambda: server.statistics().parked_watchers == 0)
        assert sum(woken_between) == 10
        assert max(woken_between) == 3
        for client in clients:
            await client.stream.aclose()


class _Short:
    """A socket whose ``send`` takes ``take`` bytes at most (None: its buffer is full)."""

    def __init__(self, sock: socket.socket, take: int | None) -> None:
        self.sock = sock
        self.take = take

    def send(self, data: bytes) -> int:
        if self.take is None:
            raise BlockingIOError
        return self.sock.send(data[:self.take])


@pytest.mark.parametrize("take", [10, None])
async def test_what_the_fan_out_could_not_send_the_connection_sends(
        monkeypatch: pytest.MonkeyPatch, take: int | None) -> None:
    init = _watch.Reply.__init__

    def short(self: _watch.Reply, sock: socket.socket, *args: Any) -> None:
        init(self, _Short(sock, take), *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_watch.Reply, "__init__", short)
    async with running(make_config(rate_limit=0.0)) as server:
        client = await Client.open(server)
        await client.send(WATCH)
        await wait_until(lambda: server.statistics().parked_watchers == 1)
        await _rename(server, "renamed", 50)
        answer = await client.answer()
        assert (answer.status, answer.body) == (200, b"renamed")
        assert server.watches.fanned_out == 1
        await client.send(NAME)
        assert (await client.answer()).body == b"renamed"
        await client.stream.aclose()


async def test_clients_that_leave_once_answered_are_not_disconnected_watchers() -> None:
    config = make_config(rate_limit=0.0, max_watchers_per_vm=100)
    async with running(config) as server:
        clients = await _park(server, 30)
        await wait_until(lambda: server.statistics().parked_watchers == 30)
        await _rename(server, "renamed", 50)
        for client in clients:
            assert (await client.answer()).body == b"renamed"
            await client.stream.aclose()
        await wait_until(lambda: server.statistics().connections_open == 0)
        assert server.statistics().watchers_disconnected == 0
        # A watcher that leaves before any answer still is one, and gives its slot back.
        leaving = await _park(server, 1)
        await wait_until(lambda: server.statistics().parked_watchers == 1)
        await leaving[0].stream.aclose()
        await wait_until(lambda: server.statistics().watchers_disconnected == 1)
        await wait_until(lambda: server.statistics().parked_watchers == 0)


async def test_a_reply_watcher_times_out_on_the_clock(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running(make_config(rate_limit=0.0, idle_timeout=1000.0)) as server:
        client = await Client.open(server)
        started = trio.current_time()
        await client.send(f"{NAME}&wait_for_change=true&timeout_sec=45")
        answer = await client.answer(seconds=60)
        assert (answer.status, answer.body) == (200, b"vm-a-name")
        assert 45 <= trio.current_time() - started < 46
        assert server.watches.fanned_out == 0
        await client.stream.aclose()


async def test_a_reply_watcher_of_a_re_pointed_caller_gets_403() -> None:
    async with running(make_config(rate_limit=0.0)) as server:
        assert server.replica is not None
        client = await Client.open(server)
        await client.send(WATCH)
        await wait_until(lambda: server.statistics().parked_watchers == 1)
        await server.replica.submit([Event("hostnet", ("callers", CALLER_A), 2, "vm-b")])
        assert (await client.answer()).status == 403
        assert server.watches.fanned_out == 0  # not a plain answer: its task sent it
        await client.stream.aclose()
