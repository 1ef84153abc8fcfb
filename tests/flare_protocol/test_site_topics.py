"""The site protocol's topics and bodies: one sender each, typed bodies, untrusted JSON refused
with the topic and key named."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from flare_protocol.errors import MessageError
from flare_protocol.site_topics import (
    BODIES,
    SERVER_TOPICS,
    SITE_TOPICS,
    DriverMessage,
    DriverReply,
    JobAbort,
    JobDeploy,
    JobEnd,
    JobLog,
    JobStatusReport,
    Metric,
    Sender,
    SiteCommand,
    SiteReply,
    SiteTopic,
    TaskResult,
    TrainTask,
    ValidateTask,
    parse_body,
    topic_from,
)


def test_the_allowlists_are_the_documented_topics_of_each_side() -> None:
    assert {t.value for t in SERVER_TOPICS} == {
        "job.deploy",
        "task.train",
        "task.validate",
        "job.abort",
        "job.end",
        "site.command",
        "driver.message",
    }
    assert {t.value for t in SITE_TOPICS} == {
        "job.status",
        "task.result",
        "metrics",
        "job.log",
        "site.reply",
        "driver.reply",
    }
    assert SERVER_TOPICS | SITE_TOPICS == set(SiteTopic)
    assert not SERVER_TOPICS & SITE_TOPICS


def test_a_topic_is_accepted_only_from_its_sender() -> None:
    assert topic_from("job.deploy", Sender.SERVER) is SiteTopic.JOB_DEPLOY
    assert topic_from("job.deploy", Sender.SITE) is None
    assert topic_from("task.result", Sender.SITE) is SiteTopic.TASK_RESULT
    assert topic_from("task.result", Sender.SERVER) is None
    for unknown in ("os.system", "", "JOB.DEPLOY", "JOB_DEPLOY", "job.deploy "):
        assert topic_from(unknown, Sender.SERVER) is None
        assert topic_from(unknown, Sender.SITE) is None


def test_every_topic_has_one_body_that_names_it() -> None:
    assert set(BODIES) == set(SiteTopic)
    for topic, body in BODIES.items():
        assert body.TOPIC is topic


SAMPLES: list[Any] = [
    JobDeploy("app", {"executor": "script", "script": "custom/train.py"}, 3),
    TrainTask("r1-train", 1, 3),
    TrainTask("r2-train", 2),
    ValidateTask("r1-validate", 1),
    JobAbort("aborted by an admin"),
    JobEnd("FINISHED:COMPLETED"),
    SiteCommand("ls", {"path": "."}),
    JobStatusReport("deployed"),
    JobStatusReport("failed", "exited with code 3", "cannot open data.csv"),
    TaskResult("r1-train", "train", 1, "FULL", 4, {"loss": 0.5}),
    TaskResult("r1-validate", "validate", 1, metrics={"acc": 0.9}),
    TaskResult("r1-train", "train", 1, error="user code failed"),
    Metric("loss", 0.5, round=1, step=3, time=1.0),
    Metric("lr", None, round=None, kind="param", text="0.01"),
    JobLog(),
    JobLog("the upload failed"),
    SiteReply({"text": "a\n"}),
    SiteReply(error={"type": "InvalidArgumentError", "message": "bad path"}),
    DriverMessage({"message_id": "m1", "message_type": "train"}, 30.0),
    DriverMessage({"message_id": "m1"}, 1.5, "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="),
    DriverReply("m1", {"message_id": "", "error": {"code": 2, "reason": "boom"}}),
    DriverReply("m1", {"message_id": ""}, "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="),
]


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_a_body_travels_as_json_and_comes_back_equal(body: Any) -> None:
    text = body.to_json()
    assert isinstance(json.loads(text), dict) and ", " not in text
    assert type(body).from_json(text) == body
    assert parse_body(body.TOPIC, text) == body


@pytest.mark.parametrize(
    ("topic", "wire"),
    [
        (SiteTopic.JOB_STATUS, {"status": "deployed"}),
        (SiteTopic.JOB_STATUS, {"status": "aborted", "error": "the site stopped"}),
        (
            SiteTopic.TASK_RESULT,
            {
                "task_id": "t",
                "round": 1,
                "kind": "train",
                "params_type": "FULL",
                "num_examples": 7,
                "metrics": {},
                "error": None,
            },
        ),
        (SiteTopic.METRICS, {"round": 1, "key": "loss", "value": 0.5, "step": 0, "time": 1.5}),
        (
            SiteTopic.METRICS,
            {"round": 1, "key": "opt", "kind": "tag", "text": "adam", "step": None, "time": 2.0},
        ),
        (SiteTopic.JOB_LOG, {}),
        (SiteTopic.SITE_REPLY, {"result": "stopping", "error": None}),
        (
            SiteTopic.JOB_DEPLOY,
            {"app": "app", "client_config": {"executor": "script"}, "total_rounds": 2},
        ),
        (SiteTopic.TASK_TRAIN, {"task_id": "t", "round": 1, "total_rounds": 2}),
        (SiteTopic.SITE_COMMAND, {"command": "shutdown", "args": {}}),
    ],
)
def test_the_bodies_read_what_the_wire_carries_and_write_it_back(
    topic: SiteTopic, wire: dict[str, Any]
) -> None:
    body = parse_body(topic, json.dumps(wire))
    assert json.loads(body.to_json()) == wire


def test_keys_a_body_does_not_know_are_ignored() -> None:
    task = TrainTask.from_json('{"task_id": "t", "round": 1, "params_type_expected": "FULL"}')
    assert task == TrainTask("t", 1)


def test_defaults_fill_optional_keys() -> None:
    assert JobDeploy.from_json("{}") == JobDeploy("", None, 0)
    assert JobDeploy.from_json("") == JobDeploy()
    assert JobAbort.from_json('{"reason": null}') == JobAbort("")
    assert SiteCommand.from_json('{"command": "pwd"}') == SiteCommand("pwd", {})


@pytest.mark.parametrize(
    ("body", "text", "message"),
    [
        (JobStatusReport, "not json", "job.status: the body is not JSON"),
        (JobStatusReport, "[1, 2]", "job.status: the body must be a JSON object, got list"),
        (JobStatusReport, "{}", "job.status: the body has no 'status'"),
        (JobStatusReport, '{"status": "done"}', "job.status: 'status' must be one of 'deployed'"),
        (JobStatusReport, '{"status": "failed", "error": 3}', "'error' must be a string or null"),
        (TaskResult, '{"kind": "train"}', "task.result: the body has no 'task_id'"),
        (TaskResult, '{"task_id": 5, "kind": "train"}', "task.result: 'task_id' must be a string"),
        (TaskResult, '{"task_id": "t", "kind": "guess"}', "'kind' must be one of 'train'"),
        (
            TaskResult,
            '{"task_id": "t", "kind": "train", "round": true}',
            "'round' must be an integer",
        ),
        (
            TaskResult,
            '{"task_id": "t", "kind": "train", "num_examples": "12"}',
            "'num_examples' must be an integer or null, got '12'",
        ),
        (
            TaskResult,
            '{"task_id": "t", "kind": "train", "metrics": [1]}',
            "'metrics' must be a JSON object",
        ),
        (Metric, '{"value": 1}', "metrics: the body has no 'key'"),
        (Metric, '{"key": "loss", "value": "high"}', "metrics: 'value' must be a number or null"),
        (Metric, '{"key": "loss", "value": NaN}', "metrics: 'value' is nan"),
        (Metric, '{"key": "loss", "value": Infinity}', "metrics: 'value' is inf"),
        (JobDeploy, '{"client_config": "x"}', "job.deploy: 'client_config' must be a JSON object"),
        (TrainTask, '{"round": 1}', "task.train: the body has no 'task_id'"),
        (SiteCommand, '{"command": ["ls"]}', "site.command: 'command' must be a string"),
        (SiteReply, '{"error": "boom"}', "site.reply: 'error' must be a JSON object"),
        (DriverMessage, '{"ttl_left": 3}', "driver.message: the body has no 'message'"),
        (DriverMessage, '{"message": {}, "npz_b64": 3}', "'npz_b64' must be a string or null"),
        (DriverReply, '{"message": {}}', "driver.reply: the body has no 'reply_to'"),
        (DriverReply, '{"reply_to": "m", "message": 1}', "'message' must be a JSON object"),
    ],
)
def test_a_malformed_body_is_a_message_error_naming_topic_and_key(
    body: Any, text: str, message: str
) -> None:
    with pytest.raises(MessageError, match=re.escape(message)) as info:
        body.from_json(text)
    assert str(info.value).startswith(f"{body.TOPIC.value}: ")
    assert info.value.topic == body.TOPIC.value
    assert isinstance(info.value, ValueError)


def test_a_sender_cannot_put_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        Metric("loss", float("nan")).to_json()
