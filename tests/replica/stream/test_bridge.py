"""The bridge's give-up message: the refusal a connection attempt saw is not hidden by a
later attempt's reset (under load the kernel's reset can discard nats-server's -ERR)."""

from __future__ import annotations

import nats.errors

from imds_replica._stream._bridge import _note_error, _why

REFUSED = nats.errors.Error("nats: 'Authorization Violation'")


def _seen(*errors: Exception) -> str:
    kept: list[Exception] = []
    for exc in errors:
        _note_error(kept, exc)
    return _why(kept)


def test_a_reset_after_a_refusal_keeps_the_refusal_first() -> None:
    why = _seen(REFUSED, ConnectionResetError(104, "Connection reset by peer"),
                nats.errors.UnexpectedEOF())
    assert why.startswith(": Error: nats: 'Authorization Violation' (then UnexpectedEOF")


def test_resets_alone_are_named_as_they_are() -> None:
    assert _seen(ConnectionResetError(104, "Connection reset by peer")) == (
        ": ConnectionResetError: [Errno 104] Connection reset by peer")


def test_the_newest_telling_error_wins() -> None:
    tls = OSError("certificate verify failed")
    assert _seen(REFUSED, ConnectionResetError(), tls) == f": OSError: {tls}"
    assert _seen() == ""
