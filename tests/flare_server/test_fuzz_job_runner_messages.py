"""Fuzzing how the job runner reads a site's envelopes: any topic and body is a typed
site message, a malformed-message event naming the site and topic, or nothing (a topic a
site may not send); never an exception in the runner."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol._generated import site_pb2
from flare_protocol.site_topics import SiteTopic, TaskResult
from flare_server.job_runner.events import MalformedMessage, SiteMessage
from flare_server.job_runner.messages import job_message
from tests.fuzzing import hostile_json_texts, mutated_json

_RESULT = TaskResult("t-1", "train", 1, "FULL", 3, {"loss": 0.5}).to_dict()
topics = st.one_of(st.sampled_from([t.value for t in SiteTopic]), st.text(max_size=12))
bodies = st.one_of(
    hostile_json_texts.map(lambda b: b.decode("utf-8", "replace")),
    mutated_json(_RESULT, max_mutations=3).map(json.dumps),
)


@given(topics, bodies, st.lists(st.text(max_size=8), max_size=3))
# bug: RecursionError, out of the body's parser and then out of the runner's second look
# for the task id of a malformed task.result
@example("task.result", "[" * 50_000, [])
@example("task.result", '{"task_id": ' + "9" * 5000 + "}", [])  # bug: ValueError (parser)
def test_any_envelope_is_a_message_a_malformed_message_or_nothing(
    topic: str, body: str, blobs: list[str]
) -> None:
    envelope = site_pb2.Envelope(
        message_id="m",
        job_id="j",
        topic=topic,
        body_json=body,
        blobs=[{"blob_id": b} for b in blobs],
    )
    event = job_message("site-1", envelope)
    if event is None:
        return
    assert event.site == "site-1"
    if isinstance(event, MalformedMessage):
        assert event.topic.value == topic and event.error.startswith(topic)
        assert event.task_id is None or (
            isinstance(event.task_id, str) and len(event.task_id) <= 128
        )
    else:
        assert isinstance(event, SiteMessage) and event.body.TOPIC.value == topic
        assert event.blob_ids == tuple(blobs)
