"""Fuzzing the Driver API's records and messages: every record set and message survives its
wire form (JSON plus ``.npz``), and whatever a peer sends instead is a message or a
MessageError, never another exception."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flare_protocol.errors import MessageError
from flare_protocol.message import Error, Message, from_wire, npz_of, to_wire
from flare_protocol.records import (
    ConfigsRecord,
    MetricsRecord,
    ParametersRecord,
    RecordSet,
    decode_content,
    encode_content,
)
from tests.fuzzing import hostile_json_texts, json_values, mutated_bytes, mutated_json

names = st.text(
    st.characters(min_codepoint=32, blacklist_characters="\x7f"), min_size=1, max_size=12
)
dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
)
# NaN never equals itself: values without it, so that equality means "unchanged".
arrays = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)).map(np.nan_to_num)
finite = st.floats(allow_nan=False, allow_infinity=False)
metric_values = st.one_of(st.integers(-(2**53), 2**53), finite, st.lists(finite, max_size=3))
records = st.one_of(
    st.dictionaries(names, arrays, max_size=3).map(ParametersRecord),
    st.dictionaries(names, metric_values, max_size=3).map(MetricsRecord),
    st.dictionaries(names, json_values, max_size=3).map(ConfigsRecord),
)
record_sets = st.dictionaries(names, records, max_size=4).map(RecordSet)


def _wire_json(value: Any) -> Any:
    """``value`` as it arrives: through JSON text and back."""
    return json.loads(json.dumps(value))


@given(record_sets)
def test_a_record_set_survives_its_wire_form(content: RecordSet) -> None:
    manifest, arrays = encode_content(content)
    assert decode_content(_wire_json(manifest), arrays, where="test") == content


@given(record_sets, st.integers(1, 2**62), st.sampled_from(["train", "evaluate", "query.stats"]))
def test_a_message_survives_its_wire_form(content: RecordSet, dst: int, kind: str) -> None:
    message = Message(content, dst, kind, ttl=60, group_id="round-1")
    data, arrays = to_wire(message)
    back = from_wire(_wire_json(data), npz_of(arrays), where="test")
    assert back.content == content and back.metadata == message.metadata


@given(st.integers(), st.none() | st.text(max_size=30))
def test_an_error_reply_survives_its_wire_form(code: int, reason: str | None) -> None:
    asked = Message(RecordSet(), 7, "query")
    reply = asked.create_error_reply(Error(code, reason))
    data, arrays = to_wire(reply)
    assert not arrays
    back = from_wire(_wire_json(data), None, where="test")
    assert back.error == Error(code, reason) and back.metadata == reply.metadata


def _decoded_or_refused(manifest: Any, arrays: dict[str, np.ndarray] | None) -> None:
    try:
        content = decode_content(manifest, arrays, where="test")
    except MessageError as exc:
        assert exc.message.startswith("test:")
    else:
        assert isinstance(content, RecordSet)


_MANIFEST, _ARRAYS = encode_content(
    RecordSet(
        {
            "model": ParametersRecord({"w": np.ones((2, 2), np.float32), "b": np.zeros(2)}),
            "m": MetricsRecord({"loss": 0.5, "hist": [1, 2]}),
            "c": ConfigsRecord({"lr": 0.1, "opts": {"a": [1, "x"]}}),
        }
    )
)


@given(mutated_json(_wire_json(_MANIFEST), max_mutations=3))
@example({"records": [{"type": [], "name": "x"}]})  # bug: TypeError (unhashable type)
@example({"records": [{"type": {}, "name": "x"}]})  # bug: TypeError (unhashable type)
def test_a_mutated_manifest_is_a_record_set_or_a_message_error(manifest: Any) -> None:
    _decoded_or_refused(manifest, dict(_ARRAYS))


@given(json_values, st.dictionaries(st.sampled_from(["a0", "a1", "x"]), arrays, max_size=3))
def test_any_manifest_is_a_record_set_or_a_message_error(
    manifest: Any, arrays: dict[str, np.ndarray]
) -> None:
    _decoded_or_refused({"records": manifest} if isinstance(manifest, list) else manifest, arrays)


_MESSAGE = Message(
    RecordSet({"model": ParametersRecord({"w": np.arange(6.0).reshape(2, 3)})}), 3, "train"
)
_DATA, _WIRE_ARRAYS = to_wire(_MESSAGE)
_NPZ = npz_of(_WIRE_ARRAYS)
assert _NPZ is not None


def _message_or_refused(data: Any, npz: bytes | None) -> None:
    try:
        message = from_wire(data, npz, where="test")
    except MessageError as exc:
        assert exc.message.startswith("test:")
    else:
        assert message.has_content() != message.has_error()


@given(mutated_json(_wire_json(_DATA), max_mutations=3), st.booleans())
@example({**_wire_json(_DATA), "ttl": 10**400}, True)  # bug: OverflowError (int to float)
@example({**_wire_json(_DATA), "created_at": 10**400}, True)  # bug: OverflowError
def test_a_mutated_message_is_a_message_or_a_message_error(data: Any, with_npz: bool) -> None:
    _message_or_refused(data, _NPZ if with_npz else None)


@given(mutated_bytes(_NPZ))
def test_a_message_with_damaged_arrays_is_refused_or_intact(npz: bytes) -> None:
    _message_or_refused(_wire_json(_DATA), npz)


@given(hostile_json_texts)
def test_any_json_text_as_a_message_is_a_message_or_a_message_error(text: bytes) -> None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return  # the transport refuses what is not JSON before from_wire sees it
    _message_or_refused(data, None)
