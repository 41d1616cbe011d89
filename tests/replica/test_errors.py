from __future__ import annotations

import pytest

from imds_replica._errors import (
    ClientError,
    ConfigError,
    CorruptLogError,
    ImdsError,
    ServerError,
    StorageError,
    Unavailable,
    ValidationError,
)
from imds_replica._event import Event


@pytest.mark.parametrize(
    ("error", "bases", "status"),
    [
        (ValidationError("x"), (ClientError, ValueError), 400),
        (ConfigError("x"), (ClientError, ValueError), 400),
        (StorageError("x"), (ServerError,), 500),
        (CorruptLogError("x"), (StorageError, ServerError), 500),
        (Unavailable("x"), (ServerError,), 503),
    ],
)
def test_tree_and_status(error: ImdsError, bases: tuple[type, ...], status: int) -> None:
    assert isinstance(error, ImdsError)
    for base in bases:
        assert isinstance(error, base)
    assert not isinstance(error, ClientError) or not isinstance(error, ServerError)
    assert error.status == status
    assert error.message.startswith("x")


def test_status_override_and_extra_fields() -> None:
    assert ValidationError("too big", status=413).status == 413
    assert ClientError("x").status == 400  # the override did not leak into the class
    err = ValidationError("bad", index=3)
    assert (str(err), err.message, err.index) == ("event 3: bad", "event 3: bad", 3)
    assert ValidationError("bad").index is None
    cfg = ConfigError("not a number", key="liveliness.tags")
    assert (str(cfg), cfg.key) == ("liveliness.tags: not a number", "liveliness.tags")
    corrupt = CorruptLogError("bad checksum", segment="00000003.seg", offset=4096)
    assert str(corrupt) == "bad checksum (00000003.seg at offset 4096)"
    assert (corrupt.segment, corrupt.offset) == ("00000003.seg", 4096)
    busy = Unavailable("replaying", retry_after=5)
    assert (busy.retry_after, busy.status) == (5, 503)


def test_validation_error_is_what_bad_input_raises() -> None:
    # Callers catch ValueError for bad events without knowing our tree.
    with pytest.raises(ValueError, match="version"):
        Event("s", ("k",), -1, None)
