"""``imds-server collect``: the warm-path collector.

Why the standard library's ``ThreadingHTTPServer``: the collector receives one batch per
machine every few minutes, and each store is blocking file work ending in fsync, which a
thread per request expresses directly; the hot path's trio/httptools shell would buy nothing
here and the collector runs as its own process, apart from any server.

``POST /v1/batches`` with a gzip JSON-lines body and the headers ``X-Imds-Batch-Id``,
``X-Imds-Cluster``, ``X-Imds-Machine``. The batch is stored at
``STORE/cluster=C/machine=M/date=YYYY-MM-DD/BATCH_ID.jsonl.gz`` (Hive partitions DuckDB
reads as columns; the date is the batch id's, so a retry lands on the same path). Stored:
201. Already stored: 200 (idempotent, nothing written). Invalid: 400, never retried.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import secrets
import signal
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ._config import NAME_RE
from ._spool import BATCH_ID_RE, batch_date
from ._store import is_compacted
from ._warm import BATCHES_PATH

MAX_BODY = 256 * 1024 * 1024


def store_batch(store: Path, cluster: str, machine: str, batch_id: str, body: bytes) -> bool:
    """Store a verified batch durably; False when that batch id is there already (as a
    file, or taken by compaction: see ``_store``).

    The file is written aside, fsynced, then hard-linked to its final name: ``link`` fails
    if the name exists, so two concurrent deliveries of one batch store it once.
    """
    directory = (store / f"cluster={cluster}" / f"machine={machine}"
                 / f"date={batch_date(batch_id)}")
    final = directory / f"{batch_id}.jsonl.gz"
    # In this order: compaction indexes a batch before it moves the file (``_store``).
    if final.exists() or is_compacted(store, cluster, machine, batch_date(batch_id), batch_id):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{batch_id}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


class _Handler(BaseHTTPRequestHandler):
    server: _CollectorServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != BATCHES_PATH:
            self._answer(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, {"error": "Content-Length required"}, close=True)
            return
        if not 0 < length <= MAX_BODY:
            self._answer(413, {"error": f"body must be 1..{MAX_BODY} bytes"}, close=True)
            return
        body = self.rfile.read(length)
        problem = self._invalid(body)
        if problem is not None:
            self._answer(400, {"error": problem})
            return
        cluster = self.headers["X-Imds-Cluster"]
        machine = self.headers["X-Imds-Machine"]
        batch_id = self.headers["X-Imds-Batch-Id"]
        try:
            stored = store_batch(self.server.store, cluster, machine, batch_id, body)
        except OSError as error:  # our disk: the sender keeps it spooled and retries
            self.log_message("cannot store batch %s: %s", batch_id, error)
            self._answer(503, {"error": "cannot store the batch now"})
            return
        self._answer(201 if stored else 200, {"batch_id": batch_id, "stored": stored})

    def _invalid(self, body: bytes) -> str | None:
        for header, pattern in (("X-Imds-Cluster", NAME_RE), ("X-Imds-Machine", NAME_RE),
                                ("X-Imds-Batch-Id", BATCH_ID_RE)):
            value = self.headers.get(header)
            if value is None or not pattern.match(value):
                return f"missing or invalid {header}"
        if self.headers.get("Content-Encoding", "").lower() != "gzip":
            return "body must be gzip (Content-Encoding: gzip)"
        try:
            text = gzip.decompress(body).decode("utf-8")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
            return f"body is not valid gzip UTF-8: {error}"
        for number, line in enumerate(text.splitlines(), 1):
            try:
                if not isinstance(json.loads(line), dict):
                    raise ValueError("not an object")
            except ValueError as error:
                return f"line {number} is not a JSON object: {error}"
        return None

    def _answer(self, status: int, doc: dict[str, object], *, close: bool = False) -> None:
        payload = (json.dumps(doc) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"collect: {self.address_string()} {format % args}\n")


class _CollectorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: Path) -> None:
        super().__init__(address, _Handler)
        self.store = store


def _compact_forever(store: Path, every: float, min_age: float, stop: threading.Event) -> None:
    """The collector's schedule: compact every ``every`` seconds until ``stop``."""
    from ._compact import CompactionBusy, compact_store

    while not stop.wait(every):
        try:
            result = compact_store(store, min_age=min_age)
        except CompactionBusy:
            continue  # someone runs ``logs compact`` by hand right now
        except Exception as error:  # the collector keeps receiving
            sys.stderr.write(f"collect: compaction failed: {error!r}\n")
            continue
        if result.batches or result.failed:
            sys.stderr.write(f"collect: compacted {result.as_dict()}\n")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def collect_main(args: argparse.Namespace) -> int:
    try:
        address = parse_listen(args.listen)
    except ValueError as error:
        print(f"collect: {error}", file=sys.stderr)
        return 2
    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    server = _CollectorServer(address, store)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="collect", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    print(f"collect: listening on http://{host!s}:{port} storing in {store}", flush=True)
    compactor = None
    if getattr(args, "compact_every", 0) > 0:
        compactor = threading.Thread(
            target=_compact_forever, args=(store, args.compact_every, args.compact_min_age, stop),
            name="collect-compact", daemon=True)
        compactor.start()
    try:
        while not stop.wait(0.5):  # wakes for signals on every platform
            pass
    finally:
        if compactor is not None:
            compactor.join()  # a compaction in progress finishes (or a kill leaves it safe)
        server.shutdown()
        server.server_close()
        thread.join()
    return 0
