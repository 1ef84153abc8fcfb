"""Fuzzing the site protocol's bodies: any text a peer sends for any topic is either the
topic's typed body or a MessageError naming the topic, and every body survives its own
wire form unchanged."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import MessageError
from flare_protocol.site_topics import (
    BODIES,
    DriverMessage,
    DriverReply,
    JobAbort,
    JobDeploy,
    JobEnd,
    JobLog,
    JobStatusReport,
    Metric,
    SiteCommand,
    SiteReply,
    SiteTopic,
    TaskResult,
    TrainTask,
    ValidateTask,
    parse_body,
)
from tests.fuzzing import hostile_json_texts, json_values, mutated_json

texts = st.text(max_size=20)
ints = st.integers(-(2**53), 2**53)
finite = st.floats(allow_nan=False, allow_infinity=False)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=3)

#: A valid body of every topic (what an honest peer sends).
bodies: st.SearchStrategy[Any] = st.one_of(
    st.builds(JobDeploy, texts, st.none() | objects, ints),
    st.builds(TrainTask, texts, ints, st.none() | ints),
    st.builds(ValidateTask, texts, ints),
    st.builds(JobAbort, texts),
    st.builds(JobEnd, texts),
    st.builds(SiteCommand, texts, objects),
    st.builds(DriverMessage, objects, finite, st.none() | texts),
    st.builds(
        JobStatusReport,
        st.sampled_from(["deployed", "running", "failed", "aborted", "finished"]),
        st.none() | texts,
        st.none() | texts.filter(bool),
    ),
    st.builds(
        TaskResult,
        texts,
        st.sampled_from(["train", "validate"]),
        ints,
        st.none() | texts,
        st.none() | ints,
        objects,
        st.none() | texts,
    ),
    st.builds(
        Metric,
        texts,
        st.none() | finite,
        st.none() | ints,
        st.none() | ints,
        st.none() | finite,
    ),
    st.builds(
        Metric,
        texts,
        st.none(),
        st.none() | ints,
        st.none() | ints,
        st.none() | finite,
        st.sampled_from(["param", "tag", "text"]),
        st.none() | texts,
    ),
    st.builds(JobLog, st.none() | texts),
    st.builds(SiteReply, json_values, st.none() | objects),
    st.builds(DriverReply, texts, objects, st.none() | texts),
)


@given(bodies)
def test_every_body_survives_its_wire_form(body: Any) -> None:
    assert parse_body(body.TOPIC, body.to_json()) == body


def _accepts_or_refuses(topic: SiteTopic, text: str | bytes) -> None:
    try:
        body = parse_body(topic, text)
    except MessageError as exc:
        assert exc.message.startswith(topic.value)
    else:
        assert isinstance(body, BODIES[topic])


@given(st.sampled_from(list(SiteTopic)), hostile_json_texts)
@example(SiteTopic.TASK_RESULT, b"[" * 50_000)  # bug: RecursionError escaped json.loads
@example(SiteTopic.METRICS, b'{"key": "k", "value": ' + b"9" * 5000 + b"}")  # bug: ValueError
@example(SiteTopic.METRICS, b'{"key": "k", "value": 1' + b"0" * 400 + b"}")  # bug: OverflowError
def test_any_text_is_a_body_or_a_message_error(topic: SiteTopic, text: bytes) -> None:
    _accepts_or_refuses(topic, text)


@given(bodies.flatmap(lambda b: st.tuples(st.just(b.TOPIC), mutated_json(b.to_dict()))))
def test_a_body_with_wrong_types_or_keys_is_a_body_or_a_message_error(
    case: tuple[SiteTopic, Any],
) -> None:
    topic, doc = case
    _accepts_or_refuses(topic, json.dumps(doc))
