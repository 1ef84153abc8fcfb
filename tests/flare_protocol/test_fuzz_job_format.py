"""Fuzzing the job format: meta.json, both app configs and Scaleout compute packages.

The seeds are the example jobs of ``examples/``: each property takes one of them, bends
one file (a JSON value of the wrong type, a dropped or added key, damaged bytes, YAML that
trips PyYAML) and checks that the job is still a job or an InvalidJobDefinition naming a
file, never another exception."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.app_config import (
    CommandExecutorConfig,
    parse_client_config,
    parse_server_config,
)
from flare_protocol.compute_package import parse_package_config, parse_python_env
from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.job_format import JobDefinition, validate_job_files, validate_meta
from tests.fuzzing import hostile_json_texts, hostile_names, mutated_bytes, mutated_json

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _job_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


#: Every example job folder (one holding meta.json), as relative path -> bytes.
JOBS: dict[str, dict[str, bytes]] = {
    p.parent.name: _job_files(p.parent) for p in sorted(EXAMPLES.glob("*/meta.json"))
}
assert len(JOBS) >= 5, JOBS.keys()


def _validate(files: Mapping[str, bytes]) -> JobDefinition:
    return validate_job_files(files.keys(), files.get)


def test_every_example_job_is_valid() -> None:
    for name, files in JOBS.items():
        assert _validate(files).meta["name"], name


def _valid_or_refused(files: Mapping[str, bytes]) -> None:
    try:
        definition = _validate(files)
    except InvalidJobDefinition as exc:
        assert exc.message and exc.path is not None, exc.message
    else:
        assert set(definition.apps) <= {name.split("/", 1)[0] for name in files}


_YAML_TRAPS = st.sampled_from(
    [
        b"entry_points: {train: {command: python train.py}}\nwhen: 2020-13-45\n",
        b"entry_points:\n  train:\n    command: !!int abc\n",
        b"entry_points: !!binary not-base64\n",
        b"entry_points: !!python/object:os.system {}\n",
        b"entry_points: &a [*a]\n",
        b"? [a, b]\n: 1\n",
        b"entry_points: {train: {command: python t.py}}\nentry_points: {}\n",
        b"- " * 2000 + b"x\n",
        b"[" * 5000,
        b"entry_points:\n\ttrain: x\n",
        b"\xff\xfe",
        b"\xef\xbb\xbfentry_points: {train: {command: python train.py}}\n",
        b"entry_points: {train: {command: ''}}\n",
        b"entry_points: {train: {command: '\"\"'}}\n",
        b"entry_points: {train: {command: 'python train.py | tee x'}}\n",
        b"entry_points: {1: {command: x}, train: {command: y}}\n",
        b"python_env: ../../etc/passwd\nentry_points: {train: {command: python train.py}}\n",
        b"name: x\ndependencies: [numpy, 2020-13-45]\n",
        b"dependencies: [--index-url=http://evil]\n",
        b"python: !!float abc\n",
    ]
)


def _text_files(files: Mapping[str, bytes]) -> list[str]:
    return [n for n in files if n.endswith((".json", ".yaml", ".npz"))]


@st.composite
def bent_jobs(draw: st.DrawFn) -> dict[str, bytes]:
    """An example job with one of its config files (or models) bent."""
    files = dict(JOBS[draw(st.sampled_from(sorted(JOBS)))])
    target = draw(st.sampled_from(_text_files(files)))
    raw = files[target]
    how = draw(st.sampled_from(["json", "bytes", "hostile", "yaml", "drop", "rename"]))
    if how == "json" and target.endswith(".json"):
        files[target] = json.dumps(draw(mutated_json(json.loads(raw), max_mutations=3))).encode()
    elif how == "yaml" and target.endswith(".yaml"):
        files[target] = draw(st.one_of(_YAML_TRAPS, _mutated_yaml(raw)))
    elif how == "hostile":
        files[target] = draw(hostile_json_texts)
    elif how == "drop":
        del files[target]
    elif how == "rename":
        files[draw(hostile_names)] = files.pop(target)
    else:
        files[target] = draw(mutated_bytes(raw))
    return files


@st.composite
def _mutated_yaml(draw: st.DrawFn, raw: bytes) -> bytes:
    doc = yaml.safe_load(raw)
    return yaml.safe_dump(draw(mutated_json(doc, max_mutations=3))).encode()


@given(bent_jobs())
@example(  # bug: ValueError (Python's int digit limit) escaped meta.json's JSON parser
    {**JOBS["hello-numpy"], "meta.json": b'{"name": "x", "min_clients": ' + b"9" * 5000 + b"}"}
)
@example(  # bug: RecursionError escaped the config parser
    {**JOBS["hello-numpy"], "app/config/config_fed_server.json": b"[" * 50_000}
)
@example(  # bug: ValueError (Python's int digit limit) escaped the config parser
    {**JOBS["hello-numpy"], "app/config/config_fed_client.json": b"9" * 5000}
)
@example(  # bug: ValueError out of PyYAML's timestamp constructor (month 13)
    {**JOBS["scaleout-numpy"], "app/scaleout.yaml": b"entry_points: 2020-13-45\n"}
)
@example(  # bug: ValueError out of PyYAML's int constructor
    {**JOBS["scaleout-numpy"], "app/python_env.yaml": b"dependencies: !!int abc\n"}
)
def test_a_bent_example_job_is_a_job_or_invalid_job_definition(files: dict[str, bytes]) -> None:
    _valid_or_refused(files)


_META = json.loads(JOBS["hello-numpy"]["meta.json"])
site_names = st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True)
metas = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,20}", fullmatch=True),
        "deploy_map": st.dictionaries(
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
            st.just(["@ALL"]) | st.lists(site_names, min_size=1, max_size=3, unique=True),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        "resource_spec": st.dictionaries(site_names, st.just({"num_of_gpus": 1}), max_size=2),
        "mandatory_clients": st.lists(site_names, max_size=2, unique=True),
        "custom_props": st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    },
)


@given(metas)
def test_a_valid_meta_comes_back_with_only_defaults_added(meta: dict[str, Any]) -> None:
    sites = {t for targets in meta["deploy_map"].values() for t in targets} - {"@ALL"}
    try:
        checked = validate_meta(json.loads(json.dumps(meta)))
    except InvalidJobDefinition as exc:  # min_clients 1 with no site named: the only refusal
        assert not sites and "min_clients" in exc.message
        return
    assert {k: checked[k] for k in meta} == meta
    assert checked["min_clients"] == 1


def _parsed_or_refused(parse: Callable[..., object], data: object) -> None:
    try:
        parse(data)
    except InvalidJobDefinition as exc:
        assert exc.message


_SERVER = [
    json.loads(f.read_bytes()) for f in sorted(EXAMPLES.glob("*/app/config/config_fed_server.json"))
]
_CLIENT = [
    json.loads(f.read_bytes()) for f in sorted(EXAMPLES.glob("*/app/config/config_fed_client.json"))
]


@given(st.sampled_from(_SERVER).flatmap(lambda c: mutated_json(c, max_mutations=3)))
def test_a_bent_server_config_is_parsed_or_refused(config: Any) -> None:
    _parsed_or_refused(parse_server_config, config)
    _parsed_or_refused(parse_server_config, json.dumps(config).encode())


@given(st.sampled_from(_CLIENT).flatmap(lambda c: mutated_json(c, max_mutations=3)))
@example(  # bug: an empty program was accepted
    {"executor": "command", "train": ["", "{model_out}", "{metadata_out}"]}
)
def test_a_bent_client_config_is_parsed_or_refused(config: Any) -> None:
    _parsed_or_refused(parse_client_config, json.dumps(config).encode())
    try:
        parsed = parse_client_config(config)
    except InvalidJobDefinition as exc:
        assert exc.message
        return
    if isinstance(parsed, CommandExecutorConfig):  # every entry point names a program
        assert all(argv[0] for argv in (parsed.train, parsed.startup, parsed.validate) if argv)


_PACKAGES = [f.read_bytes() for f in sorted(EXAMPLES.glob("*/app/scaleout.yaml"))]
_ENVS = [f.read_bytes() for f in sorted(EXAMPLES.glob("*/app/python_env.yaml"))]


@given(st.one_of(_YAML_TRAPS, st.sampled_from(_PACKAGES).flatmap(_mutated_yaml)))
@example(b"entry_points: {train: {command: python t.py}}\nwhen: 2020-13-45\n")  # bug: ValueError
@example(b"entry_points: {train: {command: !!int abc}}\n")  # bug: ValueError
@example(b"entry_points: {train: {command: '\"\"'}}\n")  # bug: an empty program was accepted
def test_any_compute_package_is_parsed_or_refused(text: bytes) -> None:
    try:
        package = parse_package_config(text, lambda _: b"name: x\n")
    except InvalidJobDefinition as exc:
        assert exc.message
    else:  # every entry point names a program to run
        assert all(words and words[0] for words in package.entry_points.values())
    _parsed_or_refused(parse_python_env, text)


@given(st.one_of(_YAML_TRAPS, st.sampled_from(_ENVS).flatmap(_mutated_yaml)))
def test_any_python_env_is_parsed_or_refused(text: bytes) -> None:
    _parsed_or_refused(parse_python_env, text)
