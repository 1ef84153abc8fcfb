"""App configs: the JSON Schemas and the rules beyond them, with errors naming file and field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flare_protocol.app_config import (
    CommandExecutorConfig,
    FedOptConfig,
    ScriptExecutorConfig,
    ServerConfig,
    client_config_schema,
    parse_client_config,
    parse_server_config,
    server_config_schema,
    substitute_argv,
    validate_app,
)
from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.models import dump_params

SERVER = {"workflow": "fedavg", "num_rounds": 3, "min_responses": 2, "round_timeout": 30}
SCRIPT = {"executor": "script", "script": "custom/train.py", "args": ["--lr", "0.1"]}
COMMAND = {
    "executor": "command",
    "startup": ["{python}", "custom/entry.py", "startup"],
    "train": [
        "{python}",
        "custom/entry.py",
        "train",
        "{model_in}",
        "{model_out}",
        "{metadata_out}",
    ],
    "validate": ["{python}", "custom/entry.py", "validate", "{model_in}", "{metrics_out}"],
}


def test_a_fedavg_server_config_parses_with_defaults() -> None:
    cfg = parse_server_config(json.dumps({"workflow": "fedavg", "num_rounds": 3}))
    assert cfg == ServerConfig(workflow="fedavg", num_rounds=3)
    assert cfg.round_timeout == 600.0 and cfg.min_responses is None and cfg.fedopt is None


def test_a_fedopt_config_fills_in_optimiser_defaults() -> None:
    cfg = parse_server_config(
        {"workflow": "fedopt", "num_rounds": 2, "fedopt": {"serveropt": "yogi"}}
    )
    assert cfg.fedopt == FedOptConfig(serveropt="yogi", learning_rate=1e-3, beta1=0.9, beta2=0.99)
    assert parse_server_config({"workflow": "fedopt", "num_rounds": 1}).fedopt == FedOptConfig()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_rounds": 3}, "missing required field 'workflow'"),
        ({"workflow": "fedsgd", "num_rounds": 3}, "field 'workflow' must be one of fedavg, fedopt"),
        ({"workflow": "fedavg", "num_rounds": "3"}, "field 'num_rounds' must be of type integer"),
        ({"workflow": "fedavg", "num_rounds": 0}, "field 'num_rounds' must be >= 1, got 0"),
        ({**SERVER, "min_responses": 0}, "field 'min_responses' must be >= 1"),
        ({**SERVER, "round_timeout": 0}, "field 'round_timeout' must be > 0"),
        ({**SERVER, "rounds": 3}, "unknown field 'rounds'"),
        ({**SERVER, "initial_model": "../model.npz"}, "field 'initial_model'"),
        ({**SERVER, "initial_model": "/etc/passwd"}, "field 'initial_model'"),
        ({**SERVER, "fedopt": {}}, "field 'fedopt' is only allowed with workflow 'fedopt'"),
        (
            {"workflow": "fedopt", "num_rounds": 1, "fedopt": {"serveropt": "sgd"}},
            "field 'fedopt.serveropt' must be one of adam, yogi, adagrad",
        ),
        (
            {"workflow": "fedopt", "num_rounds": 1, "fedopt": {"beta1": 1.0}},
            "field 'fedopt.beta1' must be < 1",
        ),
        ([], "must be of type object"),
    ],
)
def test_bad_server_configs_name_the_field(config: object, message: str) -> None:
    with pytest.raises(InvalidJobDefinition) as info:
        parse_server_config(json.dumps(config), source="app/config/config_fed_server.json")
    assert str(info.value).startswith("app/config/config_fed_server.json: ")
    assert message in str(info.value)


def test_invalid_json_names_line_and_column() -> None:
    with pytest.raises(InvalidJobDefinition, match="not valid JSON: .* line 1 column 2"):
        parse_server_config(b"{workflow}")


def test_script_and_command_client_configs_parse() -> None:
    script = parse_client_config(json.dumps(SCRIPT))
    assert script == ScriptExecutorConfig(script="custom/train.py", args=("--lr", "0.1"))
    command = parse_client_config(json.dumps(COMMAND))
    assert isinstance(command, CommandExecutorConfig)
    assert command.train[3:] == ("{model_in}", "{model_out}", "{metadata_out}")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "missing required field 'executor'"),
        ({"executor": "docker"}, "field 'executor' must be one of script, command"),
        ({"executor": "script"}, "missing required field 'script'"),
        ({**SCRIPT, "script": "../../bin/evil.py"}, "field 'script'"),
        ({**SCRIPT, "script": "custom\\train.py"}, "field 'script'"),
        ({**SCRIPT, "script": "custom/train.sh"}, "field 'script' must name a .py file"),
        ({**SCRIPT, "args": "--lr 0.1"}, "field 'args' must be of type array"),
        ({**SCRIPT, "env": {"FLARE_IPC_TOKEN": "x"}}, "field 'env' name \"FLARE_IPC_TOKEN\""),
        ({**SCRIPT, "train": ["x"]}, "unknown field 'train'"),
        ({**COMMAND, "train": "python train.py"}, "never a shell string"),
        ({**COMMAND, "train": []}, "field 'train' must not be empty"),
        ({**COMMAND, "train": ["{python}", "t.py", "{model_out}"]}, "must pass {metadata_out}"),
        ({**COMMAND, "validate": ["{python}", "v.py", "{model_in}"]}, "must pass {metrics_out}"),
        (
            {**COMMAND, "startup": ["{python}", "s.py", "{model_out}"]},
            "field 'startup[2]' uses placeholder {model_out}",
        ),
        (
            {**COMMAND, "train": ["../bin/train", "{model_out}", "{metadata_out}"]},
            "field 'train[0]'",
        ),
        ({**COMMAND, "script": "custom/train.py"}, "unknown field 'script'"),
    ],
)
def test_bad_client_configs_name_the_field(config: object, message: str) -> None:
    with pytest.raises(InvalidJobDefinition) as info:
        parse_client_config(json.dumps(config))
    assert message in str(info.value)


def test_placeholders_are_substituted_inside_arguments() -> None:
    argv = substitute_argv(
        ["{python}", "--out={model_out}", "{x"], {"python": "/py", "model_out": "/o"}
    )
    assert argv == ["/py", "--out=/o", "{x"]


def _reader(files: dict[str, bytes]):
    return lambda rel: files.get(rel)


def _app(server: object = SERVER, client: object = SCRIPT, **extra: bytes) -> dict[str, bytes]:
    files = {"custom/train.py": b"", "custom/entry.py": b"", **extra}
    if server is not None:
        files["config/config_fed_server.json"] = json.dumps(server).encode()
    if client is not None:
        files["config/config_fed_client.json"] = json.dumps(client).encode()
    return files


def test_validate_app_accepts_a_complete_app() -> None:
    model = dump_params({"w": np.zeros(2)})
    files = _app({**SERVER, "initial_model": "models/init.npz"}, **{"models/init.npz": model})
    validate_app("app", _reader(files), deployed_to_server=True, deployed_to_sites=True)
    validate_app(
        "app", _reader(_app(client=COMMAND)), deployed_to_server=True, deployed_to_sites=True
    )


def test_validate_app_needs_the_configs_its_deployment_uses() -> None:
    files = _app(server=None)
    validate_app("app", _reader(files), deployed_to_server=False, deployed_to_sites=True)
    with pytest.raises(InvalidJobDefinition, match="app/config/config_fed_server.json: missing"):
        validate_app("app", _reader(files), deployed_to_server=True, deployed_to_sites=True)
    with pytest.raises(InvalidJobDefinition, match="app/config/config_fed_client.json: missing"):
        validate_app(
            "app", _reader(_app(client=None)), deployed_to_server=True, deployed_to_sites=True
        )


def test_validate_app_needs_the_script_to_exist() -> None:
    files = _app()
    del files["custom/train.py"]
    with pytest.raises(InvalidJobDefinition, match="field 'script' names 'custom/train.py'"):
        validate_app("app", _reader(files), deployed_to_server=False, deployed_to_sites=True)


def test_validate_app_needs_command_scripts_to_exist() -> None:
    files = _app(client=COMMAND)
    del files["custom/entry.py"]
    with pytest.raises(
        InvalidJobDefinition, match="field 'startup\\[1\\]' names 'custom/entry.py'"
    ):
        validate_app("app", _reader(files), deployed_to_server=False, deployed_to_sites=True)


def test_validate_app_checks_the_initial_model() -> None:
    server = {**SERVER, "initial_model": "init.npz"}
    with pytest.raises(InvalidJobDefinition, match="field 'initial_model' names 'init.npz'"):
        validate_app("app", _reader(_app(server)), deployed_to_server=True, deployed_to_sites=False)
    bad = _app(server, **{"init.npz": b"not a zip"})
    with pytest.raises(InvalidJobDefinition, match="app/init.npz: not a usable initial model"):
        validate_app("app", _reader(bad), deployed_to_server=True, deployed_to_sites=False)


def test_per_round_validation_needs_a_validate_command() -> None:
    command = {k: v for k, v in COMMAND.items() if k != "validate"}
    files = _app({**SERVER, "validate_every_round": True}, command)
    with pytest.raises(InvalidJobDefinition, match="field 'validate' is needed"):
        validate_app("app", _reader(files), deployed_to_server=True, deployed_to_sites=True)


def test_schemas_are_published_draft_2020_12() -> None:
    for schema in (server_config_schema(), client_config_schema()):
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
