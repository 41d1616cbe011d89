"""Admin batch decoding (``_ingest``): the slice-by-slice decoder agrees with the one-call
decoders on good bodies, refuses bad ones with a reason, and lets VM reads through while a
large batch is ingested (issue 14, findings 6 and 8)."""

from __future__ import annotations

import json

import msgpack
import pytest
import trio

from imds_server._ingest import BodyError, decode_events

from .conftest import CALLER_A, V, connect, get, make_config, request_bytes, running

EVENTS = [{"source": "tags", "key": ["k", str(i)], "version": i + 1,
           "value": {"n": i, "list": [1, "two", None, True], "s": "x\u00e9\n"}}
          for i in range(100)]


@pytest.mark.parametrize("text", [
    json.dumps({"events": EVENTS}),
    json.dumps({"events": EVENTS}, indent=2),
    json.dumps({"other": {"deep": [1, 2]}, "events": EVENTS, "more": None}),
    " \n" + json.dumps({"events": EVENTS}) + "\n ",
])
async def test_json_bodies_decode_as_json_loads_does(text: str) -> None:
    events = await decode_events(text.encode(), "application/json")
    assert [e.to_dict() for e in events] == [e.to_dict() for e in
                                             await _reference(text.encode())]
    assert len(events) == 100


async def _reference(body: bytes) -> list[object]:
    from imds_replica import Event

    return [Event.from_dict(item) for item in json.loads(body)["events"]]


async def test_msgpack_bodies_decode_as_unpackb_does() -> None:
    body = msgpack.packb({"x": [1, {"y": 2}], "events": EVENTS}, use_bin_type=True)
    events = await decode_events(body, "application/msgpack")
    assert [e.to_dict() for e in events] == [e.to_dict() for e in
                                             await _reference(json.dumps(
                                                 {"events": EVENTS}).encode())]


async def test_empty_batches() -> None:
    assert await decode_events(b'{"events": []}', "application/json") == []
    assert await decode_events(msgpack.packb({"events": []}), "application/msgpack") == []


@pytest.mark.parametrize(("body", "reason"), [
    (b"", '{"events": [...]}'),
    (b"{}", '{"events": [...]}'),
    (b"[]", '{"events": [...]}'),
    (b'{"events": 3}', '{"events": [...]}'),
    (b'{"events": [], "events": []}', "twice"),
    (b'{"events": []} trailing', "extra data"),
    (b'{"events": [NaN]}', "NaN"),
    (b'{"events": [' + json.dumps(EVENTS[0]).encode() + b' 2]}', "expected , or ]"),
    (b'{"events": [', "line 1"),
    (b'{"events": [3]}', "must be an object"),
    (b'\xff{"events": []}', "not UTF-8"),
    (b'{"events": [' + b"[" * 2000 + b"]" * 2000 + b"]}", "nested too deeply"),
])
async def test_bad_json_bodies_name_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(BodyError) as info:
        await decode_events(body, "application/json")
    assert reason in info.value.message


@pytest.mark.parametrize(("body", "reason"), [
    (msgpack.packb([1]), '{"events": [...]}'),
    (msgpack.packb({"events": []})[:-1] + b"\x81", '{"events": [...]}'),
    (msgpack.packb({"events": [{"source": "tags"}]})[:-3], "ends inside"),
    (b"\x81\xa6events\x91\x81\x91\x01\x02", "a map key is an array"),
    (msgpack.packb({"events": []}) + b"\x01", "extra data"),
    (b"\x81\xa6events\x91" + b"\x91" * 5000 + b"\x01", "nested too deeply"),
])
async def test_bad_msgpack_bodies_name_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(BodyError) as info:
        await decode_events(body, "application/msgpack")
    assert reason in info.value.message


async def test_a_bad_event_is_named_by_its_index() -> None:
    body = json.dumps({"events": [*EVENTS[:5], {"source": "BAD!", "key": ["a"],
                                                "version": 1, "value": 1}]}).encode()
    with pytest.raises(BodyError) as info:
        await decode_events(body, "application/json")
    assert info.value.index == 5


@pytest.mark.integration
async def test_vm_reads_are_answered_while_a_large_batch_is_ingested() -> None:
    events = [{"source": "tags", "key": ["bulk", str(i)], "version": 1,
               "value": {"field": "v" * 64, "n": i}} for i in range(60_000)]
    body = json.dumps({"events": events}).encode()  # ~7 MB
    async with running(make_config(rate_limit=0.0)) as server:
        admin = await connect(server.admin_address, "127.0.0.1")
        answered_during: list[int] = []
        posted = trio.Event()

        async def read_while_ingesting() -> None:
            while not posted.is_set():
                reply = await get(server.vm_address, f"/metadata/instance?api-version={V}",
                                  source=CALLER_A)
                assert reply.status == 200
                if not posted.is_set():
                    answered_during.append(1)
                await trio.sleep(0.005)

        async with admin:
            await admin.send_all(request_bytes("POST", "/events",
                                               {"Content-Type": "application/json"}, body))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_while_ingesting)
                with trio.fail_after(120):
                    reply = await admin.receive_some(65536)
                posted.set()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert len(answered_during) >= 5


async def test_parts_keep_documents_whole_and_order() -> None:
    from imds_replica import Event
    from imds_server._ingest import PART_EVENTS, _parts

    events = [Event("tags", ("vms", f"vm-{i % 300}", "compute", f"f{i}"), 1, i)
              for i in range(3000)]
    parts = await _parts(events)
    assert len(parts) > 1
    assert all(len(p) <= PART_EVENTS for p in parts)
    seen: dict[tuple[str, ...], int] = {}
    for n, part in enumerate(parts):
        for event in part:
            assert seen.setdefault(event.key[:2], n) == n  # a document in one part only
    flat = [e for p in parts for e in p]
    assert sorted(flat, key=lambda e: e.value) == events  # nothing lost or doubled
    for doc in {e.key[:2] for e in events}:  # each document's events in their order
        assert [e for e in flat if e.key[:2] == doc] == [e for e in events if e.key[:2] == doc]


async def test_a_large_batch_is_submitted_in_parts_and_answered_once() -> None:
    events = [{"source": "tags", "key": ["vms", f"vm-{i % 300}", "compute", f"f{i}"],
               "version": 1, "value": i} for i in range(3000)]
    async with running() as server:
        reply = await get(server.admin_address, "/events", method="POST", headers={},
                          body=json.dumps({"events": events}).encode())
        assert reply.json() == {"events": 3000, "changed": 3000}
        assert server.replica is not None
        assert server.replica.view.get(("vms", "vm-7", "compute", "f2707")) is not None


async def test_a_key_shorter_than_a_document_is_refused_before_any_part_is_submitted() -> None:
    # Issue 11 finding 5: checked with the rest of the batch, not when its part reaches
    # Replica.submit (earlier parts would be durable by then).
    body = json.dumps({"events": [*EVENTS[:5], {"source": "tags", "key": ["vms"],
                                                "version": 1, "value": 1}]}).encode()
    with pytest.raises(BodyError, match=r"event 5: key: \['vms'\] has 1 part\(s\)") as info:
        await decode_events(body, "application/json", min_key_parts=2)
    assert info.value.index == 5
    assert len(await decode_events(body, "application/json")) == 6  # the default: 1 part


async def test_repeated_admin_batches_do_not_keep_their_garbage() -> None:
    # Found by the RSS-per-VM bench (readpath, session 3): admin ingest used to end its
    # collector pause with gc.freeze(), which also froze what was alive only for the
    # request (its body, held by the HTTP parser's reference cycle). Frozen objects are
    # never collected, so every batch's body stayed in memory for good. (The events
    # themselves are kept by the memory log: that is not what is measured here.)
    import gc
    import tracemalloc

    body = json.dumps({"events": [
        {"source": "fabric", "key": ["vms", f"vm-{i}", "compute"], "version": 1,
         "value": {"name": "x" * 200, "i": i}} for i in range(1000)]}).encode()
    async with running(make_config(rate_limit=0.0)) as server:
        async def post() -> None:
            reply = await get(server.admin_address, "/events", method="POST",
                              headers={"Content-Type": "application/json"}, body=body)
            assert reply.status == 200

        await post()
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(10):
                await post()
            gc.collect()
            kept = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*imds_server/_http.py")])
        finally:
            tracemalloc.stop()
            gc.unfreeze()  # whatever the code under test froze: not other tests' problem
    held = sum(stat.size for stat in kept.statistics("filename"))
    assert held < len(body), f"{held} bytes of requests kept after 10 batches of {len(body)}"


def _keys(value: object) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


async def test_documents_ingested_one_by_one_share_their_key_strings() -> None:
    # Found by the RSS-per-VM bench (session 5: 14.6 -> 18.0 KiB per VM): each event of a
    # batch is decoded by its own raw_decode call, whose key memo is per call, so every
    # VM's document kept its own copy of every key string. Normalised values intern them.
    from imds_server._demo import compute, network

    body = json.dumps({"events": [
        {"source": "fabric", "key": ["vms", f"vm-{i}", part], "version": 1,
         "value": compute(f"vm-{i}", f"name-{i}", 1) if part == "compute" else network(i)}
        for i in range(3) for part in ("compute", "network")]}).encode()
    async with running(make_config(rate_limit=0.0), seed=[]) as server:
        reply = await get(server.admin_address, "/events", method="POST",
                          headers={"Content-Type": "application/json"}, body=body)
        assert reply.status == 200
        assert server.replica is not None
        view = server.replica.view
        for part in ("compute", "network"):
            documents = []
            for i in range(3):
                event = view.get(("vms", f"vm-{i}", part))
                assert event is not None
                documents.append(_keys(event.value))
            assert len(documents[0]) > 10
            first = documents[0]
            for other in documents[1:]:
                assert other == first
                assert all(a is b for a, b in zip(first, other, strict=True))
