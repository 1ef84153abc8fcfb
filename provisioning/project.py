"""project.yml: NVIDIA FLARE's provisioning format, read and checked.

Every problem is one :class:`~flare_protocol.errors.ProjectFileError` whose message
names the file, the participant and the field, and carries them as ``path``,
``participant`` and ``field``. Keys we do not use (``builders``, NVIDIA FLARE-only
participant options) are accepted and reported as notices, so a project file written
for NVIDIA FLARE provisions unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from flare_protocol.errors import ProjectFileError
from flare_protocol.identity import ParticipantType, Role

__all__ = ["Participant", "Project", "load_project", "parse_project"]

#: NVIDIA FLARE's participant type words, and ours.
TYPE_WORDS = {
    "server": ParticipantType.SERVER,
    "client": ParticipantType.SITE,
    "site": ParticipantType.SITE,
    "admin": ParticipantType.ADMIN,
}
SUPPORTED_API_VERSIONS = (1, 2, 3)
DEFAULT_FED_LEARN_PORT = 8002
DEFAULT_ADMIN_PORT = 8003

_SITE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_ORG_RE = re.compile(r"^[A-Za-z0-9_]+$")
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_EMAIL_RE = re.compile(r"^[A-Za-z0-9._%-]+@[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
#: Characters that have meaning in distinguished names or paths; never allowed in a name.
_FORBIDDEN = set(',=+\\;/"<>#')
_MAX_NAME = 64  # X.509 upper bound for a CN

_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_KNOWN_TOP = {"api_version", "name", "description", "participants"}
_KNOWN_PARTICIPANT = {
    "name",
    "type",
    "org",
    "role",
    "fed_learn_port",
    "admin_port",
    "host_names",
    "default_host",
}


@dataclass(frozen=True)
class Participant:
    """One participant of the project, as provisioned."""

    name: str
    type: ParticipantType
    org: str
    role: Role | None = None
    #: Server only: where sites connect.
    fed_learn_port: int | None = None
    #: Server only: where admins connect.
    admin_port: int | None = None
    #: Server only: extra DNS names or IP addresses for the certificate's SANs.
    host_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Project:
    """A checked project file."""

    name: str
    description: str
    api_version: int
    participants: tuple[Participant, ...]
    source: Path
    #: One line per thing accepted but ignored (e.g. an NVIDIA FLARE ``builders`` section).
    notices: tuple[str, ...] = ()

    @property
    def server(self) -> Participant:
        return next(p for p in self.participants if p.type is ParticipantType.SERVER)

    def get(self, name: str) -> Participant | None:
        return next((p for p in self.participants if p.name == name), None)


def load_project(path: str | Path) -> Project:
    """Read and check a project file.

    Raises:
        ProjectFileError: the file is missing, not YAML, or breaks a rule; the message
            names the file, participant and field.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProjectFileError(
            f"{source}: project file not found (pass it with -p PATH)", path=str(source)
        ) from None
    except IsADirectoryError:
        raise ProjectFileError(
            f"{source}: is a folder, not a project file", path=str(source)
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectFileError(
            f"{source}: cannot read the project file: {exc}", path=str(source)
        ) from None
    try:
        # The libyaml-backed safe loader when present: the same safe subset as yaml.safe_load
        # (no tags that construct objects), several times faster on large projects.
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ProjectFileError(
            f"{source}: not valid YAML{where}: {problem}", path=str(source)
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors raise these for a value its resolver matched but cannot
        # build: a date of month 13 (2020-13-45), ``!!int abc``.
        raise ProjectFileError(
            f"{source}: not valid YAML: a value cannot be read ({exc})", path=str(source)
        ) from None
    return parse_project(data, source)


class _Checker:
    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(
        self, why: str, *, participant: str | None = None, field: str | None = None
    ) -> NoReturn:
        where = str(self.source)
        if participant is not None:
            where += f": participant {participant!r}"
        if field is not None:
            where += f": field '{field}'"
        raise ProjectFileError(
            f"{where}: {why}", path=str(self.source), participant=participant, field=field
        )


def _check_chars(chk: _Checker, value: str, label: str | None, field: str) -> None:
    bad = sorted({ch for ch in value if ch in _FORBIDDEN or ord(ch) < 0x20 or ord(ch) == 0x7F})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad)
        chk.fail(
            f"{value!r} contains forbidden character(s) {shown}", participant=label, field=field
        )
    if value != value.strip():
        chk.fail(f"{value!r} has leading or trailing spaces", participant=label, field=field)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_hostname(value: str) -> bool:
    if len(value) > 253 or not value:
        return False
    return all(_LABEL_RE.match(label) for label in value.rstrip(".").split("."))


def _port(chk: _Checker, raw: dict[str, Any], key: str, default: int, label: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        chk.fail(f"{value!r} is not a port number (1-65535)", participant=label, field=key)
    return int(value)


def parse_project(data: Any, source: str | Path = "project.yml") -> Project:
    """Check an already-parsed project document (see :func:`load_project`)."""
    chk = _Checker(Path(source))
    if not isinstance(data, dict):
        chk.fail("must be a YAML mapping with 'name' and 'participants' (is it a project.yml?)")
    notices: list[str] = []

    api_version = data.get("api_version", 3)
    if isinstance(api_version, bool) or api_version not in SUPPORTED_API_VERSIONS:
        chk.fail(f"{api_version!r} is not supported (use 3)", field="api_version")

    name = data.get("name")
    if name is None:
        chk.fail("missing: the project needs a name", field="name")
    if not isinstance(name, str):
        chk.fail(f"{name!r} must be a string", field="name")
    _check_chars(chk, name, None, "name")
    if not _PROJECT_RE.match(name) or len(name) > _MAX_NAME:
        chk.fail(
            f"{name!r} must match ^[A-Za-z0-9_-]+$ (at most {_MAX_NAME} characters)", field="name"
        )
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        chk.fail("must be a string", field="description")

    if "builders" in data:
        notices.append(
            f"{chk.source}: the 'builders' section is NVIDIA FLARE's; flare provision ignores it"
        )
    # YAML keys need not be strings (1, null, dates): sorted and shown as text.
    for key in sorted(set(data) - _KNOWN_TOP - {"builders"}, key=str):
        notices.append(f"{chk.source}: top-level key '{key}' is not used and was ignored")

    raw_participants = data.get("participants")
    if not isinstance(raw_participants, list) or not raw_participants:
        chk.fail("missing or empty: list the server, sites and admins", field="participants")

    participants: list[Participant] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(raw_participants, start=1):
        participants.append(_participant(chk, raw, index, notices))
        p = participants[-1]
        key = p.name.casefold()
        if key in seen:
            chk.fail(
                f"duplicate name: {seen[key]!r} is already a participant",
                participant=p.name,
                field="name",
            )
        seen[key] = p.name

    servers = [p for p in participants if p.type is ParticipantType.SERVER]
    if not servers:
        chk.fail(
            "no participant has type 'server'; a project needs exactly one", field="participants"
        )
    if len(servers) > 1:
        chk.fail(
            f"two servers ({servers[0].name!r} and {servers[1].name!r}); a project has exactly one",
            participant=servers[1].name,
            field="type",
        )
    return Project(
        name=name,
        description=description,
        api_version=int(api_version),
        participants=tuple(participants),
        source=chk.source,
        notices=tuple(notices),
    )


def _participant(chk: _Checker, raw: Any, index: int, notices: list[str]) -> Participant:
    label = f"#{index}"
    if not isinstance(raw, dict):
        chk.fail("must be a mapping with name, type and org", participant=label)
    name = raw.get("name")
    if name is None:
        chk.fail("missing", participant=label, field="name")
    if not isinstance(name, str) or not name:
        chk.fail(f"{name!r} must be a non-empty string", participant=label, field="name")
    label = name
    _check_chars(chk, name, label, "name")
    if len(name) > _MAX_NAME:
        chk.fail(f"is longer than {_MAX_NAME} characters", participant=label, field="name")

    type_word = raw.get("type")
    if type_word is None:
        chk.fail("missing (server, client or admin)", participant=label, field="type")
    if not isinstance(type_word, str) or type_word not in TYPE_WORDS:
        chk.fail(
            f"unknown type {type_word!r} (use server, client or admin)",
            participant=label,
            field="type",
        )
    ptype = TYPE_WORDS[type_word]

    org = raw.get("org")
    if org is None:
        chk.fail("missing: every participant needs an org", participant=label, field="org")
    if not isinstance(org, str):
        chk.fail(f"{org!r} must be a string", participant=label, field="org")
    _check_chars(chk, org, label, "org")
    if not _ORG_RE.match(org) or len(org) > _MAX_NAME:
        chk.fail(f"{org!r} must match ^[A-Za-z0-9_]+$", participant=label, field="org")

    if ptype is ParticipantType.SITE and not _SITE_RE.match(name):
        chk.fail(
            f"a site name must match ^[A-Za-z0-9-_]+$, got {name!r}",
            participant=label,
            field="name",
        )
    if ptype is ParticipantType.ADMIN and not _EMAIL_RE.match(name):
        chk.fail(
            f"an admin name must be an email address, got {name!r}", participant=label, field="name"
        )
    if ptype is ParticipantType.SERVER and not (_is_hostname(name) or _is_ip(name)):
        chk.fail(
            f"a server name must be a host name clients can dial, got {name!r}",
            participant=label,
            field="name",
        )

    role: Role | None = None
    raw_role = raw.get("role")
    if ptype is ParticipantType.ADMIN:
        if raw_role is None:
            chk.fail(
                "missing: an admin needs a role (project_admin, org_admin, lead, member)",
                participant=label,
                field="role",
            )
        try:
            role = Role(raw_role)
        except ValueError:
            chk.fail(
                f"unknown role {raw_role!r} (use project_admin, org_admin, lead or member)",
                participant=label,
                field="role",
            )
    elif raw_role is not None:
        chk.fail(
            f"only admins have a role, this participant is a {type_word}",
            participant=label,
            field="role",
        )

    fed_port = admin_port = None
    host_names: list[str] = []
    if ptype is ParticipantType.SERVER:
        fed_port = _port(chk, raw, "fed_learn_port", DEFAULT_FED_LEARN_PORT, label)
        admin_port = _port(chk, raw, "admin_port", DEFAULT_ADMIN_PORT, label)
        if fed_port == admin_port:
            chk.fail(
                f"admin_port equals fed_learn_port ({fed_port}); use two ports",
                participant=label,
                field="admin_port",
            )
        raw_hosts = raw.get("host_names") or []
        if isinstance(raw_hosts, str):
            raw_hosts = [raw_hosts]
        if not isinstance(raw_hosts, list):
            chk.fail(
                "must be a list of host names or IP addresses",
                participant=label,
                field="host_names",
            )
        default_host = raw.get("default_host")
        if default_host is not None:
            raw_hosts = [*raw_hosts, default_host]
        for host in raw_hosts:
            field = "default_host" if host is default_host else "host_names"
            if not isinstance(host, str) or not (_is_hostname(host) or _is_ip(host)):
                chk.fail(
                    f"{host!r} is not a host name or IP address", participant=label, field=field
                )
            if host != name and host not in host_names:
                host_names.append(host)
    else:
        for key in ("fed_learn_port", "admin_port", "host_names", "default_host"):
            if key in raw:
                notices.append(
                    f"participant {name!r}: '{key}' applies to the server only and was ignored"
                )
    unknown = sorted(map(str, set(raw) - _KNOWN_PARTICIPANT))  # YAML keys need not be text
    if unknown:
        notices.append(
            f"participant {name!r}: key(s) {', '.join(unknown)} are not used and were ignored"
        )
    return Participant(
        name=name,
        type=ptype,
        org=org,
        role=role,
        fed_learn_port=fed_port,
        admin_port=admin_port,
        host_names=tuple(host_names),
    )
