"""The warm path against a real ``collect`` process, and against misbehaving collectors."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from imds_server.telemetry import LogPipeline, TelemetryConfig, TelemetryMetrics, Uploader

from . import _http
from .conftest import COMMAND, access, stop_process

pytestmark = pytest.mark.integration


@asynccontextmanager
async def collector(store: Path, port: int = 0, *extra: str) -> AsyncIterator[int]:
    """A real ``collect`` subprocess; yields its port, terminates it on exit."""
    process = await trio.lowlevel.open_process(
        [*COMMAND, "collect", "--listen", f"127.0.0.1:{port}", "--store", str(store), *extra],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        with trio.fail_after(15):
            first = await process.stdout.receive_some(4096)
        match = re.search(rb"http://127\.0\.0\.1:(\d+)", first)
        assert match, first
        yield int(match.group(1))
    finally:
        await stop_process(process)


def warm_setup(tmp_path: Path, url: str, **warm: object
               ) -> tuple[LogPipeline, Uploader, TelemetryMetrics]:
    config = TelemetryConfig.from_mapping(
        {"warm": {"collector_url": url, "attempts": 2, "timeout": 0.5,
                  "sample_rate": 1.0, **warm}},  # delivery, not the budget, under test
        cluster="c1", machine="m1")
    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(config, tmp_path / "logs", metrics)
    assert pipeline.warm is not None
    return pipeline, Uploader(config.warm, pipeline.warm, metrics, backoff=(0.01, 0.05)), metrics


def produce(pipeline: LogPipeline, start: int, count: int) -> None:
    for n in range(start, start + count):
        pipeline.access(access(request_id=f"r-{n}"))
    pipeline.flush()


def stored(store: Path) -> tuple[list[Path], list[dict[str, object]]]:
    """Stored batch files and their lines, in batch order."""
    files = sorted(store.glob("cluster=*/machine=*/date=*/*.jsonl.gz"))
    docs = [json.loads(line)
            for f in files for line in gzip.decompress(f.read_bytes()).decode().splitlines()]
    return files, docs


def results(metrics: TelemetryMetrics, result: str) -> float:
    return metrics.registry.get_sample_value(
        "imds_telemetry_upload_batches_total", {"result": result}) or 0.0


async def test_outage_in_the_middle_loses_nothing_and_stores_no_duplicate(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    pipeline: LogPipeline | None = None
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            async with collector(store) as port:
                pipeline, uploader, metrics = warm_setup(tmp_path, f"http://127.0.0.1:{port}")
                pipeline.start()
                produce(pipeline, 0, 30)
                assert await uploader.cycle(client) == 1
            # Outage: the collector is gone for two cycles; lines keep coming.
            logging.getLogger("imds_server.test").warning("during the outage")
            produce(pipeline, 30, 30)
            assert await uploader.cycle(client) == 0
            produce(pipeline, 60, 30)
            assert await uploader.cycle(client) == 0
            assert len(uploader.spool.pending()) == 2
            assert results(metrics, "failed") == 2
            async with collector(store, port):
                produce(pipeline, 90, 10)
                assert await uploader.cycle(client) == 3  # two spooled, one sealed now
                # A lost acknowledgement: the same batch delivered again is not stored twice.
                files, _ = stored(store)
                again = await client.post(
                    f"http://127.0.0.1:{port}/v1/batches", content=files[0].read_bytes(),
                    headers={"Content-Encoding": "gzip", "X-Imds-Cluster": "c1",
                             "X-Imds-Machine": "m1",
                             "X-Imds-Batch-Id": files[0].name.split(".")[0]})
                assert again.status_code == 200
                assert again.json()["stored"] is False
    finally:
        if pipeline is not None:
            pipeline.stop()
    files, docs = stored(store)
    ids = [d["request_id"] for d in docs if "request_id" in d]
    assert ids == [f"r-{n}" for n in range(100)]  # every line, once, in order
    messages = [d["message"] for d in docs]
    assert messages.count("during the outage") == 1
    # The uploader's own warnings about the outage travel the same path.
    assert any("stays spooled" in str(m) for m in messages)
    assert all(f.parts[-4:-2] == ("cluster=c1", "machine=m1") for f in files)
    assert results(metrics, "stored") == len(files)
    assert results(metrics, "duplicate") == 0


async def test_erroring_collector_keeps_batches_then_a_refusal_sets_one_aside(
        tmp_path: Path) -> None:
    answers = [500, 503, 400]
    seen: list[str] = []

    async def handler(request: _http.Request) -> _http.Reply:
        seen.append(request.headers["x-imds-batch-id"])
        return _http.Reply(answers.pop(0) if answers else 201, b"{}")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_http.serve, handler)
        pipeline, uploader, metrics = warm_setup(tmp_path, f"http://127.0.0.1:{port}")
        pipeline.start()
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                produce(pipeline, 0, 5)
                assert await uploader.cycle(client) == 0  # 500, 503: gave up this cycle
                assert len(uploader.spool.pending()) == 1
                # 400: refused for good; then the batch of the cycle's own warnings goes.
                pipeline.flush()
                assert await uploader.cycle(client) == 1
                assert uploader.spool.pending() == []
        finally:
            pipeline.stop()
        nursery.cancel_scope.cancel()
    assert seen[0] == seen[1] == seen[2] != seen[3]  # retries resend the same batch id
    assert len(seen) == 4
    assert results(metrics, "failed") == 1
    assert results(metrics, "rejected") == 1
    assert len(list((tmp_path / "logs" / "spool" / "corrupt").iterdir())) == 1
    assert metrics.registry.get_sample_value(
        "imds_telemetry_spool_quarantined_batches_total", {"reason": "rejected"}) == 1


async def test_slow_collector_times_out_and_the_batch_stays(tmp_path: Path) -> None:
    async def handler(request: _http.Request) -> _http.Reply:
        await trio.sleep(5)
        return _http.Reply(201, b"{}")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_http.serve, handler)
        pipeline, uploader, metrics = warm_setup(tmp_path, f"http://127.0.0.1:{port}",
                                                 timeout=0.2)
        pipeline.start()
        try:
            async with httpx.AsyncClient(timeout=0.2) as client:
                produce(pipeline, 0, 5)
                with trio.fail_after(3):
                    assert await uploader.cycle(client) == 0
            assert len(uploader.spool.pending()) == 1
        finally:
            pipeline.stop()
        nursery.cancel_scope.cancel()
    assert results(metrics, "failed") == 1


async def test_collector_refuses_invalid_batches(tmp_path: Path) -> None:
    async with collector(tmp_path / "store") as port, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{port}/v1/batches"
        good = {"Content-Encoding": "gzip", "X-Imds-Cluster": "c1", "X-Imds-Machine": "m1",
                "X-Imds-Batch-Id": "01714557600000000000-0123456789abcdef"}
        body = gzip.compress(b'{"message":"x"}\n')
        assert (await client.post(url, content=body, headers=good)).status_code == 201
        for headers, content in [
            ({**good, "X-Imds-Cluster": "../etc"}, body),
            ({**good, "X-Imds-Batch-Id": "x"}, body),
            (good, b"not gzip"),
            (good, gzip.compress(b"not json\n")),
        ]:
            response = await client.post(url, content=content, headers=headers)
            assert response.status_code == 400, response.text
    files, _ = stored(tmp_path / "store")
    assert [f.relative_to(tmp_path / "store").as_posix() for f in files] == [
        "cluster=c1/machine=m1/date=2024-05-01/01714557600000000000-0123456789abcdef.jsonl.gz"]


async def test_collector_compacts_on_its_schedule(tmp_path: Path) -> None:
    from imds_server.telemetry import run_query

    store = tmp_path / "store"
    async with httpx.AsyncClient(timeout=2) as client, collector(
            store, 0, "--compact-every", "0.5", "--compact-min-age", "0") as port:
        pipeline, uploader, _ = warm_setup(tmp_path, f"http://127.0.0.1:{port}")
        pipeline.start()
        try:
            produce(pipeline, 0, 30)
            assert await uploader.cycle(client) == 1
        finally:
            pipeline.stop()
        for _ in range(300):
            if list(store.glob("compacted/date=*/cluster=c1/part-*.parquet")):
                break
            await trio.sleep(0.1)
    assert stored(store)[0] == []
    _, rows = run_query([store], [], sql="SELECT count(DISTINCT request_id), "
                        "any_value(machine) FROM logs")
    assert rows == [(30, "m1")]
