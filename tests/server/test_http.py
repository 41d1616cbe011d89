from __future__ import annotations

import pytest

from imds_server import HttpConnection, HttpLimits, ProtocolError, Response
from imds_server._http import encode_head


def test_pipelined_requests_come_out_in_order() -> None:
    conn = HttpConnection()
    conn.feed(b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
              b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.0\r\n\r\n")
    first, second, third = (conn.next_request() for _ in range(3))
    assert first is not None
    assert second is not None
    assert third is not None
    assert (first[0].target, first[0].headers["x-a"], first[1]) == ("/a", "1, 2", True)
    assert (second[0].method, second[0].body) == ("POST", b"abc")
    assert third[1] is False  # HTTP/1.0 without keep-alive
    assert conn.next_request() is None


def test_partial_request_is_mid_request() -> None:
    conn = HttpConnection()
    conn.feed(b"GET /a HTT")
    assert (conn.mid_request, conn.next_request()) == (True, None)
    conn.feed(b"P/1.1\r\n\r\n")
    state = (conn.mid_request, conn.next_request() is not None)
    assert state == (False, True)


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX: " + b"b" * 300 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nX: " + b"b" * 300, 431),  # a head that never ends
    (b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n", 413),
    (b"\x00\x01garbage\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 400),
])
def test_limits_and_garbage(data: bytes, status: int) -> None:
    conn = HttpConnection(HttpLimits(max_request_line=50, max_header_bytes=200,
                                     max_body_bytes=100))
    with pytest.raises(ProtocolError) as info:
        conn.feed(data)
    assert info.value.status == status


def test_encode_head() -> None:
    data = encode_head(Response(200, b"{}", headers=(("ETag", '"x"'),)), keep_alive=False,
                       head_only=False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 2" in head
    assert b"Connection: close" in head
    assert b'ETag: "x"' in head
    assert body == b"{}"
    only = encode_head(Response(200, b"{}"), keep_alive=True, head_only=True)
    assert only.endswith(b"\r\n\r\n")
    assert b"Content-Length: 2" in only
