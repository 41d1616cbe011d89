from __future__ import annotations

import pytest

from imds_server import HttpConnection, HttpLimits, ProtocolError, Request, Response
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


REQ = b"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n"


def _requests(conn: HttpConnection) -> list[tuple[Request, bool]]:
    out = []
    while (item := conn.next_request()) is not None:
        out.append(item)
    return out


def test_a_repeated_request_reuses_its_parse_only_when_that_is_exact() -> None:
    conn = HttpConnection()
    conn.feed(REQ)
    [(first, keep)] = _requests(conn)
    conn.feed(REQ)  # the same bytes at a message boundary: the same (immutable) request
    [(again, keep_again)] = _requests(conn)
    assert again is first
    assert (keep, keep_again) == (True, True)
    with pytest.raises(TypeError):
        first.headers["metadata"] = "false"  # type: ignore[index]  # read-only view
    conn.feed(REQ[:10])  # split: parsed afresh, still the same request
    conn.feed(REQ[10:])
    [(split, _)] = _requests(conn)
    assert split is not first
    assert (split.target, dict(split.headers)) == (first.target, dict(first.headers))
    conn.feed(REQ + REQ)  # pipelined: both parsed
    assert [r.target for r, _ in _requests(conn)] == [first.target] * 2
    conn.feed(b"GET /x HTTP/1.1\r\nX-Pad: ")  # mid-request: REQ is not a whole request
    conn.feed(REQ)
    [(padded, _)] = _requests(conn)
    assert padded.target == "/x"
    assert padded.headers["x-pad"].startswith("GET /metadata")


def test_requests_with_a_body_are_always_parsed() -> None:
    conn = HttpConnection()
    post = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    conn.feed(post)
    conn.feed(post)
    first, second = _requests(conn)
    assert first[0] is not second[0]
    assert first[0].body == second[0].body == b"abc"


def test_wire_cache_encodes_like_encode_head() -> None:
    from imds_server._http import WireCache

    cache = WireCache(size=2)
    response = Response(200, b"{}", headers=(("ETag", '"x"'),))
    for keep_alive in (True, False):
        for head_only in (True, False):
            expected = encode_head(response, keep_alive=keep_alive, head_only=head_only)
            assert cache.encode(response, keep_alive, head_only) == expected
            assert cache.encode(response, keep_alive, head_only) == expected  # a hit
    other = Response(404, b'{"error": "Not found"}')  # past the bound: dropped, refilled
    for _ in range(3):
        assert cache.encode(other, True, False) == encode_head(other, keep_alive=True,
                                                               head_only=False)


# -- issue 14 finding 11: request lines without HTTP/1.x -----------------------------------
@pytest.mark.parametrize("data", [
    b"GET /metadata/instance\r\n",  # HTTP/0.9: the line alone is the whole request
    b"GET /metadata/instance\r\n\r\n",
    b"GET /metadata/instance HTTP/0.9\r\n\r\n",
])
def test_an_http_0_9_request_is_refused_in_its_own_framing(data: bytes) -> None:
    conn = HttpConnection()
    with pytest.raises(ProtocolError) as info:
        conn.feed(data)
    assert info.value.bare  # answered as HTTP/0.9 can read it: the body alone, then close
    assert "HTTP/0.9" in info.value.message


def test_an_http_0_9_line_split_across_receives_is_still_seen() -> None:
    conn = HttpConnection()
    conn.feed(b"GET /meta")
    with pytest.raises(ProtocolError) as info:
        conn.feed(b"data/instance\r\n")
    assert info.value.bare


def test_an_unsupported_http_version_gets_505() -> None:
    conn = HttpConnection()
    with pytest.raises(ProtocolError) as info:
        conn.feed(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    assert (info.value.status, info.value.bare) == (505, False)


def test_http_1_0_and_1_1_heads_are_not_mistaken_for_0_9() -> None:
    conn = HttpConnection()
    conn.feed(b"GET / HTTP/1.0\r\nHost: x\r\n")  # head not complete yet
    conn.feed(b"\r\n")
    assert conn.next_request() is not None
