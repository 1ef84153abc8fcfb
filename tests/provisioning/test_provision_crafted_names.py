"""Crafted names in project.yml: every character that could forge a certificate subject or
escape a path or a log line is refused in every kind of name, naming the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flare_protocol.errors import ProjectFileError
from provisioning import provision

#: The characters of the security matrix (row 6): RDN separators and escapes, path
#: separators, and control characters (C0 and DEL).
CRAFTED = {
    "comma": ",",
    "equals": "=",
    "plus": "+",
    "backslash": "\\",
    "semicolon": ";",
    "slash": "/",
    "newline": "\n",
    "carriage return": "\r",
    "tab": "\t",
    "NUL": "\x00",
    "escape": "\x1b",
    "DEL": "\x7f",
}

SERVER, SITE, ADMIN = 0, 1, 2


def _project() -> dict[str, Any]:
    return {
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


def _participant(index: int, field: str, value: Callable[[str], str]) -> Callable[..., Any]:
    def change(doc: dict[str, Any], ch: str) -> str | None:
        doc["participants"][index][field] = value(ch)
        return str(doc["participants"][index]["name"])

    return change


def _project_name(doc: dict[str, Any], ch: str) -> None:
    doc["name"] = f"proj{ch}x"


#: kind -> (how to put the character in, the field the error must name)
KINDS: dict[str, tuple[Callable[[dict[str, Any], str], str | None], str]] = {
    "org": (_participant(SITE, "org", lambda ch: f"org_a{ch}x"), "org"),
    "admin name": (_participant(ADMIN, "name", lambda ch: f"admin{ch}x@org_a.com"), "name"),
    "project name": (_project_name, "name"),
    "server name": (_participant(SERVER, "name", lambda ch: f"server{ch}x.example.org"), "name"),
    "site name": (_participant(SITE, "name", lambda ch: f"site{ch}1"), "name"),
}


@pytest.mark.parametrize("char", list(CRAFTED.values()), ids=list(CRAFTED))
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_crafted_character_in_any_name_is_refused_naming_the_field(
    tmp_path: Path, kind: str, char: str
) -> None:
    put, field = KINDS[kind]
    doc = _project()
    participant = put(doc, char)
    path = tmp_path / "project.yml"
    path.write_text(yaml.safe_dump(doc))

    with pytest.raises(ProjectFileError) as info:
        provision(path, tmp_path / "ws")

    message = str(info.value)
    assert info.value.field == field and f"field '{field}'" in message
    assert message.startswith(str(path)) and "\n" not in message
    assert char.isprintable() or char not in message  # a control character only escaped
    assert "forbidden character" in message and repr(char) in message
    if participant is not None:
        assert f"participant {participant!r}" in message
    assert not (tmp_path / "ws").exists()  # nothing written


def test_flare_provision_prints_the_refusal_in_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flare_cli.main import main as flare

    doc = _project()
    doc["participants"][SITE]["org"] = "org_a,CN=admin"
    path = tmp_path / "project.yml"
    path.write_text(yaml.safe_dump(doc))
    assert flare(["provision", "-p", str(path), "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert "participant 'site-1'" in err and "field 'org'" in err and "forbidden" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "ws").exists()
