"""Fuzzing project.yml: a valid project reads back as written, and any file instead is a
project or a ProjectFileError naming the file, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import ProjectFileError
from provisioning.project import Project, load_project, parse_project
from tests.conftest import TEST_PROJECT_YML
from tests.fuzzing import hostile_names, mutated_bytes, mutated_json

_DOC = yaml.safe_load(TEST_PROJECT_YML)

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
orgs = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)
sites = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)
admins = st.builds(lambda user, domain: f"{user}@{domain}.org", label, label)
roles = st.sampled_from(["project_admin", "org_admin", "lead", "member"])


@st.composite
def projects(draw: st.DrawFn) -> dict[str, Any]:
    """A valid project.yml document."""
    server = {
        "name": draw(st.builds(lambda a, b: f"{a}.{b}", label, label)),
        "type": "server",
        "org": draw(orgs),
        "fed_learn_port": draw(st.integers(1, 30000)),
        "admin_port": draw(st.integers(30001, 65535)),
        "host_names": draw(st.lists(st.sampled_from(["127.0.0.1", "::1", "example.org"]))),
    }
    names = draw(st.lists(sites, min_size=1, max_size=4, unique_by=str.casefold))
    users = draw(st.lists(admins, max_size=3, unique_by=str.casefold))
    participants = [server]
    participants += [{"name": n, "type": "client", "org": draw(orgs)} for n in names]
    participants += [
        {"name": u, "type": "admin", "org": draw(orgs), "role": draw(roles)} for u in users
    ]
    return {"api_version": 3, "name": draw(sites), "participants": participants}


def _load_text(text: bytes) -> Project:
    with tempfile.TemporaryDirectory(prefix="fuzz-project-") as folder:
        path = Path(folder) / "project.yml"
        path.write_bytes(text)
        return load_project(path)


@given(projects())
def test_a_valid_project_reads_back_as_written(doc: dict[str, Any]) -> None:
    project = _load_text(yaml.safe_dump(doc).encode())
    assert project.name == doc["name"]
    assert [(p.name, p.org) for p in project.participants] == [
        (p["name"], p["org"]) for p in doc["participants"]
    ]
    assert project.server.fed_learn_port == doc["participants"][0]["fed_learn_port"]


def _project_or_refused(load: Any, value: Any) -> None:
    try:
        project = load(value)
    except ProjectFileError as exc:
        assert exc.message and exc.path
    else:
        assert isinstance(project, Project)


@given(mutated_json(_DOC, max_mutations=3))
@example({**_DOC, 1: "one", "x": 2})  # bug: TypeError sorting unknown keys (int and str)
@example({**_DOC, "participants": [*_DOC["participants"], {**_DOC["participants"][1], None: 1}]})
# (the second: TypeError joining a participant's unknown keys when one is null)
def test_a_bent_project_document_is_a_project_or_a_project_file_error(doc: Any) -> None:
    _project_or_refused(parse_project, doc)


_YAML_TRAPS = st.sampled_from(
    [
        b"name: p\nwhen: 2020-13-45\n",
        b"name: !!int abc\n",
        b"name: !!binary '@@'\n",
        b"name: !!python/object/apply:os.system ['true']\n",
        b"name: &a [*a]\n",
        b"? [a, b]\n: 1\n",
        b"[" * 5000,
        b"- " * 3000 + b"x",
        b"\xff\xfe\x00",
        b"name: p\n\tparticipants: []\n",
        b"",
        b"null",
        b"name: p\nparticipants: [{name: s, type: client, org: o, 2020-13-45: 1}]\n",
    ]
)


@given(
    st.one_of(
        _YAML_TRAPS,
        mutated_bytes(TEST_PROJECT_YML.encode()),
        hostile_names.map(
            lambda n: TEST_PROJECT_YML.replace("site-1", n).encode("utf-8", "replace")
        ),
    )
)
@example(b"name: p\nwhen: 2020-13-45\n")  # bug: ValueError out of PyYAML (month 13)
@example(b"name: !!int abc\n")  # bug: ValueError out of PyYAML's int constructor
def test_any_project_file_is_a_project_or_a_project_file_error(text: bytes) -> None:
    _project_or_refused(_load_text, text)
