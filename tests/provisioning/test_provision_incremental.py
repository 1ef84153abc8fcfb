"""Re-running provisioning: reuse, new participants, changes, removals and revocation."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from flare_protocol.errors import ProvisionError
from flare_protocol.kit import load_kit
from flare_protocol.signature import verify_kit
from provisioning import ProvisionResult, provision
from provisioning import provisioner as provision_module


@pytest.fixture
def project(tmp_path: Path, project_yml: Path) -> Path:
    path = tmp_path / "project.yml"
    path.write_text(project_yml.read_text())
    return path


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _participant(doc: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(p for p in doc["participants"] if p["name"] == name)


def _serial(result: ProvisionResult, name: str) -> str:
    cert = x509.load_pem_x509_certificate(load_kit(result.kits[name]).cert_path.read_bytes())
    return format(cert.serial_number, "x")


def _revoked_json(result: ProvisionResult) -> list[str]:
    server = next(k for k in result.kits.values() if (k / "startup" / "server.crt").exists())
    return json.loads((server / "startup" / "revoked.json").read_text())["serials"]


def test_rerun_reuses_ca_keys_and_serials_in_the_next_prod(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    second = provision(project, tmp_path / "ws")
    assert second.prod_dir.name == "prod_01" and first.prod_dir.is_dir()
    assert second.ca_fingerprint == first.ca_fingerprint
    assert second.issued == [] and second.reused == first.issued
    for name in first.kits:
        assert _serial(second, name) == _serial(first, name)
        assert (
            load_kit(second.kits[name]).key_path.read_bytes()
            == load_kit(first.kits[name]).key_path.read_bytes()
        )
        verify_kit(second.kits[name], first.ca_fingerprint)


def test_new_participant_is_the_only_one_issued(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    _edit(
        project,
        lambda d: d["participants"].append({"name": "site-3", "type": "client", "org": "org_c"}),
    )
    second = provision(project, tmp_path / "ws")
    assert second.issued == ["site-3"]
    assert set(second.reused) == set(first.kits)
    assert second.revoked == [] and _revoked_json(second) == []


def test_removed_participant_is_revoked_in_the_server_kit(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    _edit(
        project,
        lambda d: d.update(participants=[p for p in d["participants"] if p["name"] != "site-2"]),
    )
    second = provision(project, tmp_path / "ws")
    assert second.revoked == ["site-2"] and "site-2" not in second.kits
    assert _revoked_json(second) == [_serial(first, "site-2")]
    state = json.loads((second.state_dir / "state.json").read_text())
    assert state["revoked"][0]["name"] == "site-2"
    assert state["revoked"][0]["reason"] == "removed"
    assert "site-2" not in state["participants"]


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("site-1", lambda p: p.update(org="org_z")),
        ("lead@org_a.com", lambda p: p.update(role="member")),
        ("localhost", lambda p: p.update(host_names=["127.0.0.1", "flare.example.org"])),
    ],
    ids=["org", "role", "host_names"],
)
def test_changed_participant_gets_a_new_certificate_and_the_old_is_revoked(
    project: Path,
    tmp_path: Path,
    name: str,
    change,  # type: ignore[no-untyped-def]
) -> None:
    first = provision(project, tmp_path / "ws")
    _edit(project, lambda d: change(_participant(d, name)))
    second = provision(project, tmp_path / "ws")
    assert second.issued == [name]
    assert _serial(second, name) != _serial(first, name)
    assert _revoked_json(second) == [_serial(first, name)]
    assert second.revoked == []  # superseded, not removed


def test_port_change_keeps_certificates_and_updates_configs(project: Path, tmp_path: Path) -> None:
    provision(project, tmp_path / "ws")
    _edit(project, lambda d: _participant(d, "localhost").update(admin_port=9103))
    second = provision(project, tmp_path / "ws")
    assert second.issued == []
    assert load_kit(second.kits["site-1"]).server.admin_port == 9103


def test_revoke_without_removing_issues_a_fresh_key(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    second = provision(project, tmp_path / "ws", revoke=["site-1"])
    assert second.revoked == ["site-1"] and second.issued == ["site-1"]
    assert _revoked_json(second) == [_serial(first, "site-1")]
    assert (
        load_kit(second.kits["site-1"]).key_path.read_bytes()
        != load_kit(first.kits["site-1"]).key_path.read_bytes()
    )
    third = provision(project, tmp_path / "ws")
    assert third.issued == [] and _revoked_json(third) == [_serial(first, "site-1")]


def test_revocations_accumulate(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    provision(project, tmp_path / "ws", revoke=["site-1"])
    third = provision(project, tmp_path / "ws", revoke=["member@org_b.com"])
    assert _revoked_json(third) == [_serial(first, "site-1"), _serial(first, "member@org_b.com")]


def test_expired_certificates_are_reissued(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    later = datetime.now(timezone.utc) + timedelta(days=400)
    second = provision(project, tmp_path / "ws", now=later)
    assert sorted(second.issued) == sorted(first.kits)
    assert second.ca_fingerprint == first.ca_fingerprint
    assert len(_revoked_json(second)) == len(first.kits)


def test_existing_prod_folders_are_never_overwritten(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    (first.prod_dir.parent / "prod_07").mkdir()
    second = provision(project, tmp_path / "ws")
    assert second.prod_dir.name == "prod_08"
    assert list((first.prod_dir.parent / "prod_07").iterdir()) == []


def test_failed_run_leaves_no_prod_and_no_state_change(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = provision(project, tmp_path / "ws")
    state = (first.state_dir / "state.json").read_bytes()
    calls = []

    def failing_write_kit(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = provision_module.write_kit
    monkeypatch.setattr(provision_module, "write_kit", failing_write_kit)
    _edit(
        project,
        lambda d: d["participants"].append({"name": "site-3", "type": "client", "org": "org_c"}),
    )
    with pytest.raises(ProvisionError, match="No space left"):
        provision(project, tmp_path / "ws")
    project_dir = first.prod_dir.parent
    assert sorted(p.name for p in project_dir.iterdir()) == ["prod_00", "state"]
    assert (first.state_dir / "state.json").read_bytes() == state
    monkeypatch.undo()
    again = provision(project, tmp_path / "ws")
    assert again.prod_dir.name == "prod_01" and again.issued == ["site-3"]


def test_stale_temporary_folders_are_removed(project: Path, tmp_path: Path) -> None:
    first = provision(project, tmp_path / "ws")
    stale = first.prod_dir.parent / ".tmp-prod-crashed"
    (stale / "site-1").mkdir(parents=True)
    provision(project, tmp_path / "ws")
    assert not stale.exists()


def test_encrypted_state_needs_its_passphrase(project: Path, tmp_path: Path) -> None:
    provision(project, tmp_path / "ws", ca_passphrase=b"s3cret")
    with pytest.raises(ProvisionError, match="encrypted"):
        provision(project, tmp_path / "ws")
    with pytest.raises(ProvisionError, match="wrong passphrase"):
        provision(project, tmp_path / "ws", ca_passphrase=b"wrong")


def test_plain_state_refuses_a_passphrase(project: Path, tmp_path: Path) -> None:
    provision(project, tmp_path / "ws")
    with pytest.raises(ProvisionError, match="without a passphrase"):
        provision(project, tmp_path / "ws", ca_passphrase=b"s3cret")


def test_a_concurrent_run_on_the_same_project_is_refused(project: Path, tmp_path: Path) -> None:
    from provisioning.state import StateLock

    first = provision(project, tmp_path / "ws")
    with StateLock(first.state_dir), pytest.raises(ProvisionError, match="another flare provision"):
        provision(project, tmp_path / "ws")
    assert provision(project, tmp_path / "ws").prod_dir.name == "prod_01"


def test_failed_first_run_leaves_no_ca_behind(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_write_kit(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(provision_module, "write_kit", failing_write_kit)
    with pytest.raises(ProvisionError):
        provision(project, tmp_path / "ws")
    state_dir = tmp_path / "ws" / "testproj" / "state"
    assert sorted(p.name for p in state_dir.iterdir()) == [".lock"]
    monkeypatch.undo()
    assert provision(project, tmp_path / "ws").prod_dir.name == "prod_00"
