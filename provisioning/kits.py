"""The content of one participant's startup kit, and writing it signed.

What goes where follows :mod:`flare_protocol.kit`: ``startup/`` is signed (see
:mod:`flare_protocol.signature`), ``local/`` holds what the participant may edit, and
``transfer/`` is empty.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from flare_protocol.identity import ParticipantType, Role
from flare_protocol.kit import (
    CERT_FILE,
    CONFIG_FILE,
    CONFIG_FORMAT,
    KEY_FILE,
    KIT_README,
    LAUNCHER,
    LOCAL,
    PARTICIPANTS,
    REVOCATIONS,
    REVOKED,
    ROOT_CA,
    SETTINGS,
    SIGNATURE,
    STARTUP,
    TRANSFER,
)
from flare_protocol.signature import sign_files
from provisioning._fs import FileBatch
from provisioning.project import Participant, Project

__all__ = ["AUTHORIZATION_DEFAULT", "default_authorization_policy", "kit_files", "write_kit"]

AUTHORIZATION_DEFAULT = "authorization.json.default"
RESOURCES = "resources.json"

_ALL = "any"
_NONE = "none"
_OWN = "own"  # jobs this admin submitted
_ORG = "org"  # jobs submitted by, or sites of, this admin's org


def default_authorization_policy() -> dict[str, Any]:
    """NVIDIA FLARE's default policy as a role x right table of scopes."""
    rights = [
        "submit_job",
        "clone_job",
        "manage_job",
        "download_job",
        "view",
        "operate",
        "shell_commands",
    ]
    table = {
        Role.PROJECT_ADMIN.value: dict.fromkeys(rights, _ALL),
        Role.ORG_ADMIN.value: {
            "submit_job": _NONE,
            "clone_job": _NONE,
            "manage_job": _ORG,
            "download_job": _ORG,
            "view": _ALL,
            "operate": _ORG,
            "shell_commands": _ORG,
        },
        Role.LEAD.value: {
            "submit_job": _ALL,
            "clone_job": _OWN,
            "manage_job": _OWN,
            "download_job": _OWN,
            "view": _ALL,
            "operate": _ORG,
            "shell_commands": _NONE,
        },
        Role.MEMBER.value: {**dict.fromkeys(rights, _NONE), "view": _ALL},
    }
    return {
        "format": 1,
        "note": (
            "Default policy written by flare provision. The server reads authorization.json in "
            "this folder when it exists; copy this file to authorization.json to change the "
            "policy. Scopes: any, own (jobs you submitted), org (jobs or sites of your org), "
            "none. manage_job = abort, delete, reset_errors; download_job = a job's result, logs, "
            "errors, metrics and model; view = list, meta, stats, system info; "
            "operate = restart, shutdown, set_timeout; shell_commands = ls, cat, head, tail, "
            "grep, pwd."
        ),
        "rights": rights,
        "roles": table,
    }


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _participants(project: Project) -> bytes:
    """The server's list of the project's sites (it refuses jobs naming any other)."""
    sites = [
        {"name": p.name, "org": p.org}
        for p in project.participants
        if p.type is ParticipantType.SITE
    ]
    return _json({"format": CONFIG_FORMAT, "project": project.name, "sites": sites})


def _config(project: Project, p: Participant) -> bytes:
    server = project.server
    return _json(
        {
            "format": CONFIG_FORMAT,
            "project": project.name,
            "participant": {
                "name": p.name,
                "org": p.org,
                "type": p.type.value,
                "role": p.role.value if p.role else None,
            },
            "server": {
                "name": server.name,
                "fed_learn_port": server.fed_learn_port,
                "admin_port": server.admin_port,
                "host_names": list(server.host_names),
            },
        }
    )


#: The ``flare`` sub-command each kit's launcher runs.
_LAUNCH = {
    ParticipantType.SERVER: "server start",
    ParticipantType.SITE: "site start",
    ParticipantType.ADMIN: "admin",
}

#: The launcher's body after its header: find ``flare`` (or $FLARE) or say how to.
_FIND_FLARE = """\
DIR="$(cd "$(dirname "$0")" && pwd)"
FLARE="${FLARE:-flare}"
if ! command -v "$FLARE" >/dev/null 2>&1; then
    if [ "$FLARE" = flare ]; then
        echo "error: flare is not on PATH: activate the environment where flare-admin is" \\
            "installed (. /path/to/.venv/bin/activate), or set FLARE=/path/to/flare" >&2
    else
        echo "error: FLARE=$FLARE is not a program that can run: set FLARE=/path/to/flare," \\
            "or unset FLARE to use flare from PATH" >&2
    fi
    exit 127
fi
"""


def _launcher(p: Participant, project: Project) -> bytes:
    what = {"server": "the server", "site": f"site {p.name}", "admin": "the admin shell"}
    return (
        "#!/bin/sh\n"
        f"# Starts {what[p.type.value]} of project {project.name} from this kit.\n"
        "# The kit's signature and key permissions are checked before anything starts.\n"
        "# Runs flare from PATH, or the program named by the FLARE environment variable.\n"
        + _FIND_FLARE
        + f'exec "$FLARE" {_LAUNCH[p.type]} "$DIR/.." "$@"\n'
    ).encode()


def _readme(p: Participant, project: Project, fingerprint: str) -> bytes:
    cert, key = CERT_FILE[p.type], KEY_FILE[p.type]
    launcher = LAUNCHER[p.type]
    role = f", role {p.role.value}" if p.role else ""
    lines = [
        f"# Startup kit: {p.name} ({p.type.value}{role}, org {p.org})",
        "",
        f"Project `{project.name}`. Server `{project.server.name}`, "
        f"site port {project.server.fed_learn_port}, admin port {project.server.admin_port}.",
        "",
        "## Check it first",
        "",
        "Compare the root CA fingerprint with the one your project administrator sent you",
        "by another channel (mail, phone, chat), then verify the kit:",
        "",
        "    flare kit verify . --ca-fingerprint <fingerprint you were sent>",
        "",
        f"This kit was issued under root CA `{fingerprint}`.",
        "",
        "## What is here",
        "",
        "- `startup/` (signed; do not edit: any change makes the kit refuse to start):",
        f"  `{ROOT_CA}` (the project's root CA), `{cert}` (your certificate), `{key}` (your",
        f"  private key, mode 0600: keep it secret), `{CONFIG_FILE[p.type]}` (project and server),",
    ]
    if p.type is ParticipantType.SERVER:
        lines.append(
            f"  `{REVOCATIONS}` (the CA-signed revocation list), `{REVOKED}` (its serials),"
        )
        lines.append(f"  `{PARTICIPANTS}` (the project's sites: jobs naming others are refused),")
    lines += [
        f"  `{launcher}`, this README and `{SIGNATURE}` (the CA's signature over all of them).",
        f"- `{LOCAL}/` (not signed; yours to edit): `{SETTINGS}`"
        + (
            f", `{AUTHORIZATION_DEFAULT}` (default policy; copy to `authorization.json` "
            "to change it)"
            if p.type is ParticipantType.SERVER
            else ""
        )
        + (f", `{RESOURCES}`" if p.type is ParticipantType.SITE else "")
        + ".",
        f"- `{TRANSFER}/`: downloads land here.",
        "",
        "## Start",
        "",
        f"    startup/{launcher}",
        "",
    ]
    return "\n".join(lines).encode()


#: Default ``local/settings.json`` per type; the keys are the ones the server
#: (``flare_server.settings``) and the site (``flare_site.settings``) read.
_SETTINGS: dict[ParticipantType, dict[str, Any]] = {
    ParticipantType.SERVER: {"log_level": "INFO", "heartbeat_timeout": 30.0, "grace_period": 5.0},
    ParticipantType.SITE: {
        "log_level": "INFO",
        "heartbeat_interval_s": 5.0,
        "connect_timeout_s": 10.0,
    },
    ParticipantType.ADMIN: {"log_level": "INFO"},
}


@functools.cache
def _settings_json(ptype: ParticipantType) -> bytes:
    """Default ``local/settings.json`` (the same for every participant of a type)."""
    return _json(_SETTINGS[ptype])


def kit_files(
    project: Project,
    p: Participant,
    *,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    fingerprint: str,
    revoked_serials: list[str],
    crl_pem: bytes | None = None,
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The (unsigned) ``startup/`` and ``local/`` files of one kit, by name."""
    startup = {
        ROOT_CA: ca_pem,
        CERT_FILE[p.type]: cert_pem,
        KEY_FILE[p.type]: key_pem,
        CONFIG_FILE[p.type]: _config(project, p),
        LAUNCHER[p.type]: _launcher(p, project),
        KIT_README: _readme(p, project, fingerprint),
    }
    local = {SETTINGS: _settings_json(p.type)}
    if p.type is ParticipantType.SERVER:
        startup[REVOKED] = _json({"serials": revoked_serials})
        if crl_pem is not None:
            startup[REVOCATIONS] = crl_pem
        startup[PARTICIPANTS] = _participants(project)
        local[AUTHORIZATION_DEFAULT] = _json(default_authorization_policy())
    elif p.type is ParticipantType.SITE:
        local[RESOURCES] = _json({"max_concurrent_jobs": 1})
    return startup, local


def write_kit(
    batch: FileBatch,
    kit_dir: Path,
    p: Participant,
    startup: dict[str, bytes],
    local: dict[str, bytes],
    ca_key: Any,
) -> None:
    """Create ``kit_dir`` with its three folders; sign ``startup/`` with ``ca_key``."""
    key_name = KEY_FILE[p.type]
    launcher = LAUNCHER[p.type]
    batch.mkdir(kit_dir)
    batch.mkdir(kit_dir / STARTUP)
    batch.mkdir(kit_dir / LOCAL)
    batch.mkdir(kit_dir / TRANSFER)
    for name, data in startup.items():
        mode = 0o600 if name == key_name else 0o755 if name == launcher else 0o644
        batch.write(kit_dir / STARTUP / name, data, mode)
    batch.write(kit_dir / STARTUP / SIGNATURE, sign_files(startup, ca_key), 0o644)
    for name, data in local.items():
        batch.write(kit_dir / LOCAL / name, data, 0o644)
