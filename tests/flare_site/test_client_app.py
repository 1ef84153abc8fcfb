"""The Flower-style ClientApp: handlers by message type, and tasks of built-in workflows
arriving as messages (tried with ``flare job run`` on the driver example's app)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.errors import FlareError
from flare_protocol.models import load_params
from flare_site.client import (
    ClientApp,
    Context,
    Message,
    MetricsRecord,
    RecordSet,
)
from flare_site.job_cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _message(kind: str) -> Message:
    msg = Message(RecordSet({"m": MetricsRecord({"x": 1})}), 7, kind, group_id="2")
    msg.metadata.message_id = "m1"
    return msg


def test_a_handler_answers_its_message_type_and_a_record_set_becomes_the_reply() -> None:
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> RecordSet:
        return RecordSet({"m": MetricsRecord({"x": msg.content["m"]["x"] + 1})})

    @app.train("fedprox")
    def prox(msg: Message, context: Context) -> Message:
        return Message(RecordSet(), reply_to=msg)

    reply = app(_message("query"), Context())
    assert reply.content["m"]["x"] == 2
    assert reply.metadata.reply_to_message_id == "m1" and reply.metadata.src_node_id == 7
    assert app(_message("train.fedprox"), Context()).metadata.message_type == "train.fedprox"


def test_a_type_without_a_handler_or_a_bad_return_is_a_flare_error() -> None:
    app = ClientApp()
    with pytest.raises(FlareError, match=r"no handler for 'evaluate' .* @app.evaluate\(\)"):
        app(_message("evaluate"), Context())

    @app.train()
    def train(msg: Message, context: Context) -> object:
        return {"not": "a message"}

    with pytest.raises(FlareError, match="returned a dict"):
        app(_message("train"), Context())
    with pytest.raises(FlareError, match="already registered"):
        app.train()(train)


@pytest.mark.parametrize("job", ["driver-fedavg", "driver-sampling"])
def test_the_driver_examples_validate(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES / job)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: job {job!r}")


def test_a_client_app_takes_a_built_in_workflows_task_as_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = EXAMPLES / "driver-fedavg" / "app"
    update, meta = tmp_path / "u.npz", tmp_path / "meta.json"
    argv = ["run", "train", "--path", str(app), "--input", str(app / "models/initial_model.npz")]
    assert main([*argv, "--output", str(update), "--metadata", str(meta), "--site", "site-1"]) == 0
    params = load_params(update)
    assert params.keys() == {"w", "b"} and params["w"].dtype == np.float64
    assert np.abs(params["w"]).sum() > 0  # it trained from the zero model
    written = json.loads(meta.read_text())
    assert written["num_examples"] > 0 and written["params_type"] == "FULL"
    assert written["metrics"]["lr"] == 0.05  # the ClientApp's default (no config)
    metrics = tmp_path / "metrics.json"
    argv = ["run", "validate", "--path", str(app), "--input", str(update)]
    assert main([*argv, "--output", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["mse"] > 0
