"""Fuzzing the server's look at the arrays of a Driver API message (``content_names``):
their names, or an InvalidArgumentError naming the message; never another exception."""

from __future__ import annotations

from hypothesis import given

from flare_protocol.errors import InvalidArgumentError
from flare_server.job_runner.driver_types import content_names
from tests.npz_fuzzing import hostile_npz, with_regressions


@given(hostile_npz())
@with_regressions  # NotImplementedError, tokenize.TokenError ... escaped here too
def test_any_message_arrays_have_names_or_are_refused(data: bytes) -> None:
    try:
        names = content_names(data, max_bytes=1024**2, where="message m-1")
    except InvalidArgumentError as exc:
        assert exc.message.startswith("message m-1")
    else:
        assert all(isinstance(n, str) for n in names)
