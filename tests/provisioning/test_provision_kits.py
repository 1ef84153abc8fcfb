"""Kit layout, file modes, configs, and the state folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flare_protocol.identity import ParticipantType, Role
from flare_protocol.kit import load_kit, project_sites
from provisioning import ProvisionResult, provision

ALL = [
    "localhost",
    "site-1",
    "site-2",
    "admin@org_a.com",
    "lead@org_a.com",
    "lead@org_b.com",
    "orgadmin@org_a.com",
    "member@org_b.com",
]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_the_server_kit_lists_the_projects_sites(provisioned: ProvisionResult) -> None:
    kit = load_kit(provisioned.kits["localhost"])
    assert project_sites(kit) == ("site-1", "site-2")
    data = json.loads((kit.startup / "participants.json").read_text())
    assert data["sites"] == [
        {"name": "site-1", "org": "org_a"},
        {"name": "site-2", "org": "org_b"},
    ]


def test_server_kit_layout(provisioned: ProvisionResult) -> None:
    kit = provisioned.kits["localhost"]
    assert kit == provisioned.prod_dir / "localhost"
    assert _files(kit) == {"startup", "local", "transfer"}
    assert _files(kit / "startup") == {
        "rootCA.pem",
        "server.crt",
        "server.key",
        "fed_server.json",
        "revocations.crl",
        "revoked.json",
        "participants.json",
        "start.sh",
        "README.md",
        "signature.json",
    }
    assert _files(kit / "local") == {"settings.json", "authorization.json.default"}
    assert _files(kit / "transfer") == set()


def test_site_kit_layout(provisioned: ProvisionResult) -> None:
    kit = provisioned.kits["site-1"]
    assert _files(kit / "startup") == {
        "rootCA.pem",
        "client.crt",
        "client.key",
        "fed_client.json",
        "start.sh",
        "README.md",
        "signature.json",
    }
    assert _files(kit / "local") == {"settings.json", "resources.json"}
    assert json.loads((kit / "local" / "resources.json").read_text()) == {"max_concurrent_jobs": 1}


def test_admin_kit_layout(provisioned: ProvisionResult) -> None:
    kit = provisioned.kits["lead@org_b.com"]
    assert _files(kit / "startup") == {
        "rootCA.pem",
        "client.crt",
        "client.key",
        "fed_admin.json",
        "fl_admin.sh",
        "README.md",
        "signature.json",
    }
    assert _files(kit / "local") == {"settings.json"}


@pytest.mark.parametrize("name", ALL)
def test_keys_are_0600_and_folders_0700(provisioned: ProvisionResult, name: str) -> None:
    kit = load_kit(provisioned.kits[name])
    assert _mode(kit.key_path) == 0o600
    for folder in (kit.root, kit.startup, kit.local, kit.transfer):
        assert _mode(folder) == 0o700, folder
    assert _mode(provisioned.prod_dir) == 0o700


@pytest.mark.parametrize("name", ALL)
def test_kit_key_matches_its_certificate(provisioned: ProvisionResult, name: str) -> None:
    kit = load_kit(provisioned.kits[name])
    key = serialization.load_pem_private_key(kit.key_path.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(kit.cert_path.read_bytes())
    assert key.public_key() == cert.public_key()


def test_config_names_project_participant_and_server(provisioned: ProvisionResult) -> None:
    kit = load_kit(provisioned.kits["orgadmin@org_a.com"])
    assert (kit.project, kit.name, kit.org) == ("testproj", "orgadmin@org_a.com", "org_a")
    assert (kit.type, kit.role) == (ParticipantType.ADMIN, Role.ORG_ADMIN)
    assert kit.server.name == "localhost"
    assert (kit.server.fed_learn_port, kit.server.admin_port) == (8102, 8103)
    assert kit.server.host_names == ("127.0.0.1",)
    raw = json.loads(kit.config_path.read_text())
    assert raw["format"] == 1 and set(raw) == {"format", "project", "participant", "server"}


def test_server_and_site_config_types(provisioned: ProvisionResult) -> None:
    assert load_kit(provisioned.kits["localhost"]).type is ParticipantType.SERVER
    site = load_kit(provisioned.kits["site-2"])
    assert (site.type, site.role, site.org) == (ParticipantType.SITE, None, "org_b")


def test_first_run_has_an_empty_revocation_list(provisioned: ProvisionResult) -> None:
    revoked = provisioned.kits["localhost"] / "startup" / "revoked.json"
    assert json.loads(revoked.read_text()) == {"serials": []}


@pytest.mark.parametrize(
    ("name", "script", "command"),
    [
        ("localhost", "start.sh", "server start"),
        ("site-1", "start.sh", "site start"),
        ("member@org_b.com", "fl_admin.sh", "admin"),
    ],
)
def test_launcher_runs_flare_on_the_kit(
    provisioned: ProvisionResult, name: str, script: str, command: str
) -> None:
    path = provisioned.kits[name] / "startup" / script
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert f'exec "$FLARE" {command} "$DIR/.." "$@"' in text
    assert 'FLARE="${FLARE:-flare}"' in text
    assert _mode(path) & 0o100


def test_default_authorization_policy_follows_nvflare(provisioned: ProvisionResult) -> None:
    doc = json.loads(
        (provisioned.kits["localhost"] / "local" / "authorization.json.default").read_text()
    )
    roles = doc["roles"]
    assert set(roles) == {"project_admin", "org_admin", "lead", "member"}
    assert set(roles["project_admin"].values()) == {"any"}
    assert roles["org_admin"]["submit_job"] == "none" and roles["org_admin"]["manage_job"] == "org"
    assert roles["lead"]["submit_job"] == "any" and roles["lead"]["manage_job"] == "own"
    assert {k for k, v in roles["member"].items() if v != "none"} == {"view"}
    assert "authorization.json" in doc["note"]


def test_kit_readme_tells_how_to_verify(provisioned: ProvisionResult) -> None:
    text = (provisioned.kits["site-1"] / "startup" / "README.md").read_text()
    assert "flare kit verify" in text and provisioned.ca_fingerprint in text


def test_no_kit_holds_the_ca_key(provisioned: ProvisionResult) -> None:
    ca_key = (provisioned.state_dir / "ca.key").read_bytes()
    for path in provisioned.prod_dir.rglob("*"):
        if path.is_file():
            assert path.read_bytes() != ca_key
            assert b"ca.key" not in path.name.encode()


def test_state_folder_is_private(provisioned: ProvisionResult) -> None:
    state = provisioned.state_dir
    assert _mode(state) == 0o700 and _mode(state / "issued") == 0o700
    assert _mode(state / "ca.key") == 0o600
    bundles = list((state / "issued").iterdir())
    assert len(bundles) == 1 and _mode(bundles[0]) == 0o600
    issued = json.loads(bundles[0].read_text())["certificates"]
    assert {entry["name"] for entry in issued.values()} == set(provisioned.kits)
    doc = json.loads((state / "state.json").read_text())
    assert set(doc["participants"]) == set(provisioned.kits)
    assert {r["serial"] for r in doc["participants"].values()} == set(issued)
    assert doc["prods"] == ["prod_00"]


def test_state_keeps_every_issued_certificate(provisioned: ProvisionResult) -> None:
    bundle = next((provisioned.state_dir / "issued").iterdir())
    issued = json.loads(bundle.read_text())["certificates"]
    for name, kit_dir in provisioned.kits.items():
        kit = load_kit(kit_dir)
        serial = format(
            x509.load_pem_x509_certificate(kit.cert_path.read_bytes()).serial_number, "x"
        )
        assert issued[serial]["cert"].encode() == kit.cert_path.read_bytes()
        assert issued[serial]["name"] == name


def test_passphrase_encrypts_ca_and_stored_keys_but_not_kits(
    tmp_path: Path, project_yml: Path
) -> None:
    result = provision(project_yml, tmp_path, ca_passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in (result.state_dir / "ca.key").read_bytes()
    bundle = next((result.state_dir / "issued").iterdir())
    for entry in json.loads(bundle.read_text())["certificates"].values():
        assert entry["key"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY")
    kit_key = load_kit(result.kits["site-1"]).key_path.read_bytes()
    assert b"BEGIN PRIVATE KEY" in kit_key  # participants start without a passphrase
    again = provision(project_yml, tmp_path, ca_passphrase=b"correct horse")
    assert load_kit(again.kits["site-1"]).key_path.read_bytes() == kit_key


def test_keys_are_0600_whatever_the_umask(tmp_path: Path, project_yml: Path) -> None:
    old = os.umask(0)
    try:
        result = provision(project_yml, tmp_path)
    finally:
        os.umask(old)
    assert _mode(load_kit(result.kits["site-1"]).key_path) == 0o600
    assert _mode(result.kits["site-1"]) == 0o700
    assert _mode(result.state_dir / "ca.key") == 0o600


def test_no_temporary_folder_is_left_behind(provisioned: ProvisionResult) -> None:
    project_dir = provisioned.prod_dir.parent
    assert sorted(p.name for p in project_dir.iterdir()) == ["prod_00", "state"]


def test_default_policy_file_is_the_servers_default(provisioned: ProvisionResult) -> None:
    """The .default file parses with the server's loader and equals its built-in table."""
    from flare_server import authz

    path = provisioned.kits["localhost"] / "local" / "authorization.json.default"
    policy = authz.Policy.from_mapping(json.loads(path.read_text()), source=str(path))

    def plain(table):  # type: ignore[no-untyped-def]
        return {role: dict(row) for role, row in table.items()}

    assert plain(policy.table) == plain(authz.Policy.default().table)


def test_default_settings_load_in_server_and_site(provisioned: ProvisionResult) -> None:
    from flare_server.settings import ServerSettings
    from flare_site.settings import load_site_settings

    server = ServerSettings.from_kit(load_kit(provisioned.kits["localhost"]))
    assert server.extra == {} and server.log_level == "INFO"
    load_site_settings(load_kit(provisioned.kits["site-1"]))
