"""project.yml: NVIDIA FLARE's format accepted unchanged, bad input refused in one clear line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from flare_protocol.errors import ProjectFileError, ProvisionError
from flare_protocol.identity import ParticipantType, Role
from flare_protocol.signature import verify_kit
from provisioning import load_project, provision

#: A verbatim copy of shared/examples/nvflare-style-project.yml (NVIDIA FLARE's format).
NVFLARE_EXAMPLE = Path(__file__).with_name("nvflare-style-project.yml")
EXAMPLE = Path(__file__).resolve().parents[2] / "startup_kits" / "project.yml"

BASE = {
    "api_version": 3,
    "name": "proj",
    "participants": [
        {
            "name": "server.example.org",
            "type": "server",
            "org": "org_s",
            "fed_learn_port": 8002,
            "admin_port": 8003,
        },
        {"name": "site-1", "type": "client", "org": "org_a"},
        {"name": "admin@org_a.com", "type": "admin", "org": "org_a", "role": "project_admin"},
    ],
}


def _variant(change) -> dict:  # type: ignore[no-untyped-def,type-arg]
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    change(doc)
    return doc


def _set(index: int, **fields):  # type: ignore[no-untyped-def]
    return lambda d: d["participants"][index].update(fields)


def _drop(index: int, key: str):  # type: ignore[no-untyped-def]
    return lambda d: d["participants"][index].pop(key)


def test_nvidia_flare_project_file_provisions_unchanged(tmp_path: Path) -> None:
    result = provision(NVFLARE_EXAMPLE, tmp_path)
    assert result.project == "hospital_consortium"
    assert len(result.kits) == 8
    assert any("builders" in n for n in result.notices)
    for kit in result.kits.values():
        verify_kit(kit, result.ca_fingerprint)


def test_nvidia_flare_fields_are_read(tmp_path: Path) -> None:
    project = load_project(NVFLARE_EXAMPLE)
    server = project.server
    assert (server.name, server.fed_learn_port, server.admin_port) == (
        "fl.consortium.example.org",
        8002,
        8003,
    )
    assert server.host_names == ("localhost", "127.0.0.1")
    roles = {p.name: p.role for p in project.participants if p.type is ParticipantType.ADMIN}
    assert roles["it@hospital-b.example.org"] is Role.ORG_ADMIN
    assert project.get("hospital-a").type is ParticipantType.SITE  # type: ignore[union-attr]


def test_documented_example_project_provisions(tmp_path: Path) -> None:
    result = provision(EXAMPLE, tmp_path)
    roles = {p.role for p in load_project(EXAMPLE).participants if p.role}
    assert roles == set(Role)
    assert result.notices == []


def test_default_host_and_unknown_keys_are_accepted_with_notices(tmp_path: Path) -> None:
    doc = _variant(_set(0, default_host="flare.example.org", connection_security="mtls"))
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(doc))
    project = load_project(path)
    assert project.server.host_names == ("flare.example.org",)
    assert any("connection_security" in n for n in project.notices)


def test_default_ports_are_nvflares(tmp_path: Path) -> None:
    doc = _variant(
        lambda d: [d["participants"][0].pop(k) for k in ("fed_learn_port", "admin_port")]
    )
    path = tmp_path / "p.yml"
    path.write_text(yaml.safe_dump(doc))
    server = load_project(path).server
    assert (server.fed_learn_port, server.admin_port) == (8002, 8003)


BAD = {
    "missing project name": (lambda d: d.pop("name"), None, "name"),
    "project name with slash": (lambda d: d.update(name="a/b"), None, "name"),
    "no participants": (lambda d: d.update(participants=[]), None, "participants"),
    "participant without name": (_drop(1, "name"), "'#2'", "name"),
    "unknown type": (_set(1, type="overseer"), "'site-1'", "type"),
    "missing type": (_drop(1, "type"), "'site-1'", "type"),
    "missing org": (_drop(1, "org"), "'site-1'", "org"),
    "bad org": (_set(1, org="org-a"), "'site-1'", "org"),
    "unknown role": (_set(2, role="superuser"), "'admin@org_a.com'", "role"),
    "admin without role": (_drop(2, "role"), "'admin@org_a.com'", "role"),
    "site with role": (_set(1, role="lead"), "'site-1'", "role"),
    "admin not an email": (_set(2, name="root"), "'root'", "name"),
    "site name with dot": (_set(1, name="site.1"), "'site.1'", "name"),
    "server name not a host": (_set(0, name="-bad-"), "'-bad-'", "name"),
    "duplicate names": (
        lambda d: d["participants"].append({"name": "SITE-1", "type": "client", "org": "org_b"}),
        "'SITE-1'",
        "name",
    ),
    "two servers": (
        lambda d: d["participants"].append(
            {"name": "other.example.org", "type": "server", "org": "org_s"}
        ),
        "'other.example.org'",
        "type",
    ),
    "no server": (lambda d: d["participants"].pop(0), None, "participants"),
    "port zero": (_set(0, fed_learn_port=0), "'server.example.org'", "fed_learn_port"),
    "port too big": (_set(0, admin_port=70000), "'server.example.org'", "admin_port"),
    "port as text": (_set(0, admin_port="8003"), "'server.example.org'", "admin_port"),
    "same ports": (_set(0, admin_port=8002), "'server.example.org'", "admin_port"),
    "bad host name": (_set(0, host_names=["bad host"]), "'server.example.org'", "host_names"),
    "api version": (lambda d: d.update(api_version=9), None, "api_version"),
    **{
        f"name with {label}": (_set(1, name=f"site{ch}1"), None, "name")
        for label, ch in [
            ("comma", ","),
            ("equals", "="),
            ("plus", "+"),
            ("backslash", "\\"),
            ("semicolon", ";"),
            ("slash", "/"),
            ("newline", "\n"),
            ("NUL", "\x00"),
            ("escape", "\x1b"),
        ]
    },
    "admin with plus": (_set(2, name="a+role=project_admin@org_a.com"), None, "name"),
    "org with comma": (_set(1, org="org_a,CN=x"), "'site-1'", "org"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_project_is_one_line_naming_file_participant_and_field(
    tmp_path: Path, case: str
) -> None:
    change, participant, field = BAD[case]
    path = tmp_path / "project.yml"
    path.write_text(yaml.safe_dump(_variant(change)))
    with pytest.raises(ProjectFileError) as info:
        provision(path, tmp_path / "ws")
    exc = info.value
    message = str(exc)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert exc.field == field and f"field '{field}'" in message
    if participant is not None:
        assert f"participant {participant}" in message
    assert not (tmp_path / "ws").exists()  # nothing written for a bad file


@pytest.mark.parametrize(
    "text",
    ["name: [unclosed", "- just\n- a list\n", "plain text", "", "name: x\n\tparticipants: []"],
    ids=["broken", "list", "scalar", "empty", "tab"],
)
def test_not_a_project_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "project.yml"
    path.write_text(text)
    with pytest.raises(ProjectFileError) as info:
        provision(path, tmp_path / "ws")
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_project_file(tmp_path: Path) -> None:
    with pytest.raises(ProjectFileError, match="not found"):
        provision(tmp_path / "nope.yml", tmp_path / "ws")


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "project.yml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ProjectFileError):
        provision(path, tmp_path / "ws")
    assert not (tmp_path / "pwned").exists()


def test_workspace_that_is_a_file_is_refused(tmp_path: Path, project_yml: Path) -> None:
    blocker = tmp_path / "ws"
    blocker.write_text("a file")
    with pytest.raises(ProvisionError) as info:
        provision(project_yml, blocker / "inner")
    assert "-w" in str(info.value)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_workspace_on_a_read_only_file_system_is_refused(project_yml: Path) -> None:
    """/proc refuses new folders even to root: a real unwritable place."""
    with pytest.raises(ProvisionError) as info:
        provision(project_yml, Path("/proc/flare-workspace"))
    message = str(info.value)
    assert message.startswith("/proc/flare-workspace") and "-w DIR" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_workspace_is_refused(tmp_path: Path, project_yml: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    ws.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ProvisionError, match="-w DIR"):
            provision(project_yml, ws)
    finally:
        ws.chmod(0o700)


def test_unknown_key_type_is_refused(tmp_path: Path, project_yml: Path) -> None:
    with pytest.raises(ProvisionError, match="ec-p256"):
        provision(project_yml, tmp_path, key_type="dsa-1024")


def test_revoking_a_stranger_is_refused(tmp_path: Path, project_yml: Path) -> None:
    with pytest.raises(ProjectFileError, match="not a participant"):
        provision(project_yml, tmp_path, revoke=["nobody"])
