"""Fuzzing the server's checks of a Driver API message a driver pushes or a site replies:
its JSON (``check_wire``), its inline arrays (``decode_b64``) and their names
(``content_names``): each input passes, or is refused with the error the caller chose
(InvalidArgumentError for a driver), never another exception."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import InvalidArgumentError, MessageError
from flare_protocol.message import Message, to_wire
from flare_protocol.records import ConfigsRecord, ParametersRecord, RecordSet
from flare_server.job_runner.driver_types import check_wire, content_names, decode_b64
from tests.fuzzing import hostile_json_texts, mutated_json
from tests.npz_fuzzing import hostile_npz, with_regressions

_DATA, _ARRAYS = to_wire(
    Message(
        RecordSet(
            {
                "model": ParametersRecord({"w": np.zeros(2)}),
                "config": ConfigsRecord({"lr": 0.1, "tags": ["a"]}),
            }
        ),
        5,
        "train",
    )
)
_DATA = json.loads(json.dumps(_DATA))


@given(hostile_npz())
@with_regressions  # NotImplementedError, tokenize.TokenError ... escaped here too
def test_any_message_arrays_have_names_or_are_refused(data: bytes) -> None:
    try:
        names = content_names(data, max_bytes=1024**2, where="message m-1")
    except InvalidArgumentError as exc:
        assert exc.message.startswith("message m-1")
    else:
        assert all(isinstance(n, str) for n in names)


def _checked_or_refused(data: Any, names: frozenset[str]) -> None:
    try:
        checked = check_wire(data, names, where="message 1", error=InvalidArgumentError)
    except InvalidArgumentError as exc:
        assert exc.message.startswith("message 1")
    else:
        assert isinstance(checked, dict)


def test_an_honest_message_passes() -> None:
    assert check_wire(_DATA, frozenset(_ARRAYS), where="message 1") == _DATA


@given(mutated_json(_DATA, max_mutations=3), st.sampled_from([frozenset(_ARRAYS), frozenset()]))
@example({**_DATA, "note": math.nan}, frozenset(_ARRAYS))  # bug: ValueError from NaN
def test_any_message_json_passes_or_is_refused(data: Any, names: frozenset[str]) -> None:
    _checked_or_refused(data, names)


@given(hostile_json_texts)
def test_any_pushed_text_parses_to_a_message_or_is_refused(text: bytes) -> None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return  # the push refuses text that is not JSON (InvalidArgumentError) first
    _checked_or_refused(data, frozenset())


@given(
    st.one_of(
        st.text(max_size=40), st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())
    )
)
def test_any_inline_arrays_text_decodes_or_is_refused(text: str) -> None:
    try:
        raw = decode_b64(text, "message 1", 64)
    except InvalidArgumentError as exc:
        assert exc.message.startswith("message 1")
    else:
        assert base64.b64encode(raw).decode() == text


def test_message_error_is_the_default() -> None:
    try:
        check_wire([], frozenset(), where="reply")
    except MessageError as exc:
        assert exc.message.startswith("reply")
