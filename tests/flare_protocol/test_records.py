"""Driver API records and messages: Flower's shapes, checked values, a pickle-free wire form."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest

from flare_protocol.errors import InvalidArgumentError, MessageError
from flare_protocol.message import (
    MAX_JSON_BYTES,
    Error,
    ErrorCode,
    Message,
    MessageType,
    check_message_type,
    from_wire,
    node_id,
    npz_of,
    to_wire,
)
from flare_protocol.records import (
    Array,
    ArrayRecord,
    ConfigsRecord,
    MetricsRecord,
    ParametersRecord,
    RecordDict,
    RecordSet,
)


def _content() -> RecordSet:
    rs = RecordSet()
    rs.parameters_records["model"] = ParametersRecord(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3)}
    )
    rs.metrics_records["m"] = MetricsRecord({"loss": 0.5, "accs": [0.1, 0.2], "n": 3})
    rs.configs_records["c"] = ConfigsRecord({"lr": 0.1, "name": "x", "nested": {"a": [1, None]}})
    return rs


def _round_trip(message: Message) -> Message:
    data, arrays = to_wire(message)
    text = json.dumps(data)
    return from_wire(json.loads(text), npz_of(arrays), where="test")


def test_a_record_set_round_trips_through_json_and_npz():
    msg = Message(_content(), 7, MessageType.TRAIN, group_id="3", ttl=30)
    back = _round_trip(msg)
    assert back.content == msg.content
    assert back.metadata.dst_node_id == 7
    assert back.metadata.group_id == "3"
    assert back.metadata.ttl == 30.0
    assert back.content.parameters_records["model"]["w"].dtype == np.float32


def test_views_are_live_and_typed():
    rs = RecordSet()
    rs.configs_records["cfg"] = ConfigsRecord({"a": 1})
    assert list(rs) == ["cfg"]
    assert list(rs.parameters_records) == []
    with pytest.raises(KeyError):
        rs.parameters_records["cfg"]
    with pytest.raises(InvalidArgumentError, match="must be a ParametersRecord"):
        rs.parameters_records["x"] = ConfigsRecord()  # type: ignore[assignment]
    assert rs.config_records is not None and dict(rs.config_records) == {"cfg": rs["cfg"]}


def test_flower_newer_names_are_the_same_classes():
    assert RecordDict is RecordSet and ArrayRecord is ParametersRecord
    record = ArrayRecord([np.ones(2), np.zeros(1)])
    assert list(record) == ["0", "1"]
    assert [a.shape for a in record.to_numpy_ndarrays()] == [(2,), (1,)]
    assert ParametersRecord({"a": Array(np.ones(3))})["a"].shape == (3,)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ParametersRecord({"o": np.array([object()])}), "only bool, integer"),
        (lambda: ParametersRecord({"s": np.array(["text"])}), "only bool, integer"),
        (lambda: MetricsRecord({"x": "text"}), "must be a number"),
        (lambda: MetricsRecord({"x": float("nan")}), "finite"),
        (lambda: ConfigsRecord({"b": b"raw"}), "uint8 array"),
        (lambda: ConfigsRecord({"inf": float("inf")}), "finite"),
        (lambda: RecordSet({"": ConfigsRecord()}), "record name"),
    ],
)
def test_what_cannot_travel_is_refused_when_set(make, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make()


def test_an_error_reply_round_trips():
    msg = Message(_content(), 5, "query.stats")
    msg.metadata.message_id = "m1"
    reply = msg.create_error_reply(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"))
    back = _round_trip(reply)
    assert back.has_error() and not back.has_content()
    assert back.error == Error(2, "boom")
    assert back.metadata.reply_to_message_id == "m1"
    assert back.metadata.dst_node_id == 0 and back.metadata.src_node_id == 5
    with pytest.raises(ValueError, match="has_content"):
        back.content  # noqa: B018


def test_message_types_follow_flower():
    for ok in ("train", "evaluate", "query", "train.fedprox", "query.stats_2"):
        assert check_message_type(ok) == ok
    for bad in ("fit", "train.", "query.bad-name", "", None, 3):
        with pytest.raises(InvalidArgumentError, match="message type"):
            check_message_type(bad)


def test_node_ids_are_stable_positive_integers():
    assert node_id("site-1") == node_id("site-1") != node_id("site-2")
    assert 0 < node_id("site-1") < 2**63


def test_a_pickled_array_is_refused_on_receipt():
    data, _ = to_wire(Message(RecordSet({"p": ParametersRecord({"x": np.ones(1)})}), 1, "train"))
    buffer = io.BytesIO()
    np.savez(buffer, a0=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(MessageError, match="arrays"):
        from_wire(data, buffer.getvalue(), where="test")
    assert b"evil" in pickle.dumps({"evil": 1})  # the payload was a real pickle


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(ttl="soon"), "'ttl'"),
        (lambda d: d.update(message_type="fit"), "message type"),
        (lambda d: d.update(message_id="../x"), "message id"),
        (lambda d: d.update(dst_node_id=-1), "dst_node_id"),
        (lambda d: d.update(error={"code": 1}), "either 'content' or 'error'"),
        (lambda d: d["content"]["records"].append({"name": "z", "type": "pickle"}), "type"),
        (lambda d: d["content"]["records"][0]["arrays"].append("extra"), "not in the content"),
    ],
)
def test_untrusted_message_fields_are_checked(change, match):
    data, arrays = to_wire(Message(_content(), 1, "train"))
    data = json.loads(json.dumps(data))
    change(data)
    with pytest.raises(MessageError, match=match):
        from_wire(data, npz_of(arrays), where="test")


def test_arrays_the_manifest_does_not_name_are_refused():
    data, arrays = to_wire(Message(_content(), 1, "train"))
    arrays["a9"] = np.ones(1)
    with pytest.raises(MessageError, match="holds 3 arrays, its records name 2"):
        from_wire(data, npz_of(arrays), where="test")


def test_json_beyond_the_cap_is_refused_naming_the_remedy():
    big = RecordSet({"c": ConfigsRecord({"text": "x" * (MAX_JSON_BYTES + 1)})})
    with pytest.raises(InvalidArgumentError, match="ParametersRecord"):
        to_wire(Message(big, 1, "train"))


def test_a_reply_takes_its_ends_from_the_message_it_answers():
    msg = Message(_content(), 9, MessageType.EVALUATE, group_id="4", ttl=60)
    msg.metadata.message_id = "abc"
    reply = Message(RecordSet(), reply_to=msg)
    m = reply.metadata
    assert (m.src_node_id, m.dst_node_id, m.reply_to_message_id) == (9, 0, "abc")
    assert (m.group_id, m.message_type) == ("4", "evaluate")
    assert 0 < m.ttl <= 60
    with pytest.raises(InvalidArgumentError, match="reply takes"):
        Message(RecordSet(), 3, "train", reply_to=msg)
