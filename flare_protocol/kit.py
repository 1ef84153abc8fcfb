"""The startup-kit format: file names, the config each kit carries, and loading it.

A kit is ``<workspace>/<project>/prod_NN/<participant>/`` with:

* ``startup/`` (signed by the project CA, see :mod:`flare_protocol.signature`):
  ``rootCA.pem``; ``server.crt``/``server.key`` (server) or ``client.crt``/``client.key``
  (sites and admins); one of ``fed_server.json``, ``fed_client.json``, ``fed_admin.json``;
  ``revocations.crl`` (the CA-signed revocation list), ``revoked.json`` (the same
  serials as JSON, for servers of earlier releases) and ``participants.json`` (server
  only); ``start.sh`` (server, sites)
  or ``fl_admin.sh`` (admins);
  ``README.md``; ``signature.json``.
* ``local/``: settings the participant may edit (not signed): ``settings.json``;
  ``authorization.json`` on the server overrides the default policy when present.
* ``transfer/``: an admin's downloads.

The ``fed_*.json`` config (format 1)::

    {
      "format": 1,
      "project": "hospital_consortium",
      "participant": {"name": "hospital-a", "org": "hospital_a", "type": "site", "role": null},
      "server": {"name": "fl.example.org", "fed_learn_port": 8002, "admin_port": 8003,
                 "host_names": ["localhost", "127.0.0.1"]}
    }

The server's ``participants.json`` lists the project's sites, so that the server can
refuse a job naming a site the project does not have::

    {"format": 1, "project": "hospital_consortium",
     "sites": [{"name": "hospital-a", "org": "hospital_a"}, ...]}

``local/settings.json`` may hold ``"server_address": "host:port"`` to dial another
address than the kit's (NAT, port forwarding, tests); TLS still verifies the kit's
server name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_protocol.errors import KitError, KitIncomplete
from flare_protocol.identity import ParticipantType, Role

STARTUP = "startup"
LOCAL = "local"
TRANSFER = "transfer"

ROOT_CA = "rootCA.pem"
SIGNATURE = "signature.json"
REVOKED = "revoked.json"
#: The project CA's signed revocation list (an X.509 CRL, PEM), server kits only.
REVOCATIONS = "revocations.crl"
PARTICIPANTS = "participants.json"
SETTINGS = "settings.json"
AUTHORIZATION = "authorization.json"
KIT_README = "README.md"

CONFIG_FORMAT = 1

CERT_FILE = {
    ParticipantType.SERVER: "server.crt",
    ParticipantType.SITE: "client.crt",
    ParticipantType.ADMIN: "client.crt",
}
KEY_FILE = {
    ParticipantType.SERVER: "server.key",
    ParticipantType.SITE: "client.key",
    ParticipantType.ADMIN: "client.key",
}
CONFIG_FILE = {
    ParticipantType.SERVER: "fed_server.json",
    ParticipantType.SITE: "fed_client.json",
    ParticipantType.ADMIN: "fed_admin.json",
}
LAUNCHER = {
    ParticipantType.SERVER: "start.sh",
    ParticipantType.SITE: "start.sh",
    ParticipantType.ADMIN: "fl_admin.sh",
}


@dataclass(frozen=True)
class ServerEndpoint:
    """Where the project's server listens, as provisioned."""

    name: str
    fed_learn_port: int
    admin_port: int
    host_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Kit:
    """A loaded startup kit (paths and config; nothing is verified here)."""

    root: Path
    project: str
    name: str
    org: str
    type: ParticipantType
    role: Role | None
    server: ServerEndpoint
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def startup(self) -> Path:
        return self.root / STARTUP

    @property
    def local(self) -> Path:
        return self.root / LOCAL

    @property
    def transfer(self) -> Path:
        return self.root / TRANSFER

    @property
    def root_ca_path(self) -> Path:
        return self.startup / ROOT_CA

    @property
    def cert_path(self) -> Path:
        return self.startup / CERT_FILE[self.type]

    @property
    def key_path(self) -> Path:
        return self.startup / KEY_FILE[self.type]

    @property
    def config_path(self) -> Path:
        return self.startup / CONFIG_FILE[self.type]

    def server_address(self, port: int) -> str:
        """``host:port`` to dial: ``local/settings.json`` ``server_address`` wins."""
        override = self.settings.get("server_address")
        if override:
            return str(override)
        return f"{self.server.name}:{port}"


def detect_type(kit_dir: Path) -> ParticipantType:
    """Which participant a kit belongs to, from the config file it holds."""
    startup = Path(kit_dir) / STARTUP
    if not startup.is_dir():
        raise KitIncomplete(
            f"{kit_dir} is not a startup kit: it has no {STARTUP}/ folder "
            "(pass the participant's folder under prod_NN/)",
            path=str(startup),
        )
    found = [t for t, f in CONFIG_FILE.items() if (startup / f).is_file()]
    if len(found) != 1:
        raise KitIncomplete(
            f"{startup} must hold exactly one of fed_server.json, fed_client.json, "
            f"fed_admin.json; found {len(found)}",
            path=str(startup),
        )
    return found[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KitIncomplete(f"missing kit file {path}", path=str(path)) from None
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError: not UTF-8 or not JSON, or an integer of more digits than Python
        # converts; RecursionError: nested deeper than the parser's stack.
        raise KitError(f"cannot read {path}: {exc}", path=str(path)) from None
    if not isinstance(data, dict):
        raise KitError(f"{path} must hold a JSON object", path=str(path))
    return data


def load_kit(kit_dir: str | Path, expected_type: ParticipantType | None = None) -> Kit:
    """Load a kit's config (no signature or certificate checks; see pre-flight)."""
    root = Path(kit_dir).expanduser().resolve()
    ptype = detect_type(root)
    if expected_type is not None and ptype is not expected_type:
        raise KitError(
            f"{root} is {ptype.with_article} kit, but {expected_type.with_article} kit is needed",
            path=str(root),
        )
    cfg_path = root / STARTUP / CONFIG_FILE[ptype]
    cfg = _read_json(cfg_path)
    try:
        if cfg.get("format") != CONFIG_FORMAT:
            raise KitError(f"{cfg_path}: unsupported format {cfg.get('format')!r}")
        part = cfg["participant"]
        srv = cfg["server"]
        server = ServerEndpoint(
            name=str(srv["name"]),
            fed_learn_port=int(srv["fed_learn_port"]),
            admin_port=int(srv["admin_port"]),
            host_names=tuple(srv.get("host_names", ())),
        )
        role = Role(part["role"]) if part.get("role") else None
        settings_path = root / LOCAL / SETTINGS
        settings = _read_json(settings_path) if settings_path.is_file() else {}
        return Kit(
            root=root,
            project=str(cfg["project"]),
            name=str(part["name"]),
            org=str(part["org"]),
            type=ParticipantType(part["type"]),
            role=role,
            server=server,
            settings=settings,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise KitError(f"{cfg_path} is malformed: {exc!r}", path=str(cfg_path)) from exc


def project_sites(kit: Kit) -> tuple[str, ...] | None:
    """The site names of a server kit's ``startup/participants.json``, sorted; None when
    the kit has none (provisioned before the file existed).

    Raises:
        KitError: the file is unreadable or malformed (naming it).
    """
    path = kit.startup / PARTICIPANTS
    if not path.is_file():
        return None
    data = _read_json(path)
    sites = data.get("sites")
    if data.get("format") != CONFIG_FORMAT or not isinstance(sites, list):
        raise KitError(
            f"{path} is malformed: it needs 'format': 1 and a 'sites' list", path=str(path)
        )
    names: list[str] = []
    for site in sites:
        name = site.get("name") if isinstance(site, dict) else None
        if not isinstance(name, str) or not name:
            raise KitError(f"{path} is malformed: every site needs a 'name'", path=str(path))
        names.append(name)
    return tuple(sorted(names))
