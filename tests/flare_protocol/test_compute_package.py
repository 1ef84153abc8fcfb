"""scaleout.yaml and python_env.yaml are checked as strictly as config_fed_client.json."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from flare_protocol.app_config import CLIENT_CONFIG, load_site_config, validate_app
from flare_protocol.compute_package import (
    PackageExecutorConfig,
    PythonEnvSpec,
    parse_package_config,
    parse_python_env,
)
from flare_protocol.errors import InvalidJobDefinition

SCALEOUT = """\
python_env: python_env.yaml
entry_points:
  build:
    command: python model.py
  startup:
    command: python data.py
  train:
    command: python train.py --epochs 2
  validate:
    command: python3 validate.py
  predict:
    command: python predict.py
"""
ENV = "name: .env\nbuild_dependencies:\n  - pip\ndependencies:\n  - numpy>=1.26\n  - fedn\n"
FILES = ("model.py", "data.py", "train.py", "validate.py")


def _reader(files: dict[str, str]) -> Callable[[str], bytes | None]:
    def read(relpath: str) -> bytes | None:
        text = files.get(relpath)
        return None if text is None else text.encode()

    return read


def _app(**overrides: str | None) -> dict[str, str]:
    files = {"scaleout.yaml": SCALEOUT, "python_env.yaml": ENV, **{f: "" for f in FILES}}
    for name, text in overrides.items():
        name = name.replace("__", ".").replace("_yaml", ".yaml")
        if text is None:
            files.pop(name, None)
        else:
            files[name] = text
    return files


def _refusal(files: dict[str, str], **kw: bool) -> str:
    with pytest.raises(InvalidJobDefinition) as info:
        validate_app("app", _reader(files), deployed_to_server=False, deployed_to_sites=True, **kw)
    return str(info.value)


def test_a_scaleout_package_parses_with_python_mapped_and_scaleouts_arguments_appended():
    config = load_site_config(_reader(_app()), app_name="app")
    assert isinstance(config, PackageExecutorConfig)
    assert config.entry("train") == ("{python}", "train.py", "--epochs", "2")
    assert config.entry("validate") == ("{python}", "validate.py")
    commands = config.as_commands()
    assert commands.train == ("{python}", "train.py", "--epochs", "2", "{model_in}", "{model_out}")
    assert commands.validate == ("{python}", "validate.py", "{model_in}", "{metrics_out}")
    assert commands.startup == ("{python}", "data.py")
    assert config.python_env == PythonEnvSpec(
        name=".env", dependencies=("numpy>=1.26", "fedn"), build_dependencies=("pip",)
    )
    validate_app("app", _reader(_app()), deployed_to_server=False, deployed_to_sites=True)


def test_fedn_yaml_is_read_too():
    files = _app(scaleout_yaml=None)
    files["fedn.yaml"] = SCALEOUT
    assert load_site_config(_reader(files), app_name="app").path == "fedn.yaml"


def test_an_app_with_both_configs_is_refused():
    files = _app()
    files[CLIENT_CONFIG] = json.dumps({"executor": "script", "script": "train.py"})
    assert "has config/config_fed_client.json and scaleout.yaml: keep one" in _refusal(files)


def test_an_app_with_neither_config_names_both():
    message = _refusal({"train.py": ""})
    assert "config_fed_client.json: missing" in message and "scaleout.yaml" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "entry_point:\n  train: {command: python train.py}\n",
            "unknown key 'entry_point' (did you mean 'entry_points'?)",
        ),
        (
            "entry_points:\n  validate: {command: python validate.py}\n",
            "field 'entry_points.train' is required",
        ),
        (
            "entry_points:\n  train: {command: python train.py}\n  trian: {command: x}\n",
            "unknown key 'trian' (did you mean 'train'?)",
        ),
        (
            "entry_points:\n  train: {command: python train.py}\n  forward: {command: x}\n",
            "split learning is not supported",
        ),
        (
            "entry_points:\n  train: {cmd: python train.py}\n",
            "field 'entry_points.train' has unknown key 'cmd'",
        ),
        ("entry_points:\n  train: {command: ''}\n", "must be a non-empty string"),
        ("entry_points:\n  train: {command: python train.py > log.txt}\n", "run without a shell"),
        ("entry_points:\n  train: {command: FOO=1 python train.py}\n", "starts with an assignment"),
        (
            "entry_points:\n  train:\n    command: python train.py {model_out}\n",
            "placeholders are for config_fed_client.json",
        ),
        (
            "entry_points:\n  train: {command: ../bin/train}\n",
            "must be a relative path inside the app",
        ),
        (
            "entry_points:\n  train: {command: python gone.py}\n",
            "field 'entry_points.train.command' names 'gone.py', which is not in app 'app'",
        ),
        (
            "entry_points:\n  train: {command: python train.py}\n  train: {command: python x.py}\n",
            "key 'train' appears twice",
        ),
        ("entry_points: [train]\n", "field 'entry_points' must be a mapping"),
        ("entry_points:\n  train: {command: 'python \"train.py'}\n", "cannot be split into words"),
        ("entry_points:\n  train: [oops\n", "not valid YAML"),
        (
            "python_env: ../env.yaml\nentry_points:\n  train: {command: python train.py}\n",
            "field 'python_env' must be a relative path",
        ),
        (
            "python_env: env.yaml\nentry_points:\n  train: {command: python train.py}\n",
            "field 'python_env' names 'env.yaml', which is not in app 'app'",
        ),
    ],
)
def test_scaleout_yaml_refusals_name_the_file_and_field(text: str, expected: str):
    message = _refusal(_app(scaleout_yaml=text))
    assert message.startswith("app/scaleout.yaml:"), message
    assert expected in message, message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: x\ndependecies: [numpy]\n",
            "unknown key 'dependecies' (did you mean 'dependencies'?)",
        ),
        ("dependencies: numpy\n", "field 'dependencies' must be a list of requirements"),
        ("dependencies:\n  - numpy\n  -\n", "field 'dependencies[1]' must be a requirement string"),
        ("dependencies:\n  - --index-url https://example.org/simple\n", "is a pip option"),
        (
            "build_dependencies:\n  - -r requirements.txt\n",
            "field 'build_dependencies[0]' is a pip option",
        ),
        ("python: [3]\n", "field 'python' must be a version"),
        ("- numpy\n", "must be a mapping"),
    ],
)
def test_python_env_refusals_name_the_file_and_field(text: str, expected: str):
    message = _refusal(_app(python_env_yaml=text))
    assert message.startswith("app/python_env.yaml:"), message
    assert expected in message, message


def test_a_server_that_validates_every_round_needs_a_validate_entry_point():
    files = _app(scaleout_yaml="entry_points:\n  train: {command: python train.py}\n")
    files["config/config_fed_server.json"] = json.dumps(
        {"workflow": "fedavg", "num_rounds": 1, "validate_every_round": True}
    )
    with pytest.raises(InvalidJobDefinition, match="field 'entry_points.validate' is needed"):
        validate_app("app", _reader(files), deployed_to_server=True, deployed_to_sites=True)


def test_predict_is_accepted_but_its_script_is_not_required():
    files = _app()
    assert "predict.py" not in files
    validate_app("app", _reader(files), deployed_to_server=False, deployed_to_sites=True)


def test_deeply_nested_yaml_is_refused_not_a_crash():
    message = _refusal(_app(scaleout_yaml="[" * 100_000 + "]" * 100_000))
    assert message == "app/scaleout.yaml: nested too deeply"


def test_a_python_version_written_as_a_number_is_kept_as_text():
    assert parse_python_env("python: 3.11\n").python == "3.11"


def test_a_package_without_python_env_runs_in_the_sites_python():
    config = parse_package_config(
        "entry_points:\n  train: {command: bash run.sh}\n", _reader({}), source="scaleout.yaml"
    )
    assert config.python_env is None and config.entry("train") == ("bash", "run.sh")
