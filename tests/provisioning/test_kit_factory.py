"""tests/kit_factory.py makes what it promises: real certificates with exactly one defect."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from flare_protocol.errors import IdentityRejected
from flare_protocol.identity import ParticipantType, identity_from_certificate
from flare_protocol.kit import load_kit
from flare_protocol.signature import verify_kit
from provisioning import ProvisionResult, provision
from tests import kit_factory as kf


def _cert(kit: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(load_kit(kit).cert_path.read_bytes())


def _root(kit: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(load_kit(kit).root_ca_path.read_bytes())


def _key_matches(kit: Path) -> bool:
    k = load_kit(kit)
    key = serialization.load_pem_private_key(k.key_path.read_bytes(), None)
    return key.public_key() == _cert(kit).public_key()


@pytest.fixture
def p(provisioned: ProvisionResult) -> ProvisionResult:
    return provisioned


def test_copies_leave_the_original_untouched(p: ProvisionResult, tmp_path: Path) -> None:
    before = _cert(p.kits["site-1"]).serial_number
    kit = kf.expired_kit(p, "site-1", tmp_path)
    assert kit != p.kits["site-1"] and _cert(p.kits["site-1"]).serial_number == before
    verify_kit(p.kits["site-1"], p.ca_fingerprint)


def test_expired_kit(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.expired_kit(p, "site-1", tmp_path)
    cert = _cert(kit)
    assert cert.not_valid_after_utc < datetime.now(timezone.utc)
    cert.verify_directly_issued_by(_root(kit))
    assert _key_matches(kit)
    verify_kit(kit, p.ca_fingerprint)


def test_not_yet_valid_kit(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.not_yet_valid_kit(p, "admin@org_a.com", tmp_path)
    assert _cert(kit).not_valid_before_utc > datetime.now(timezone.utc)
    verify_kit(kit, p.ca_fingerprint)


def test_ca_leaf_kit_is_rejected_by_the_identity_check(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.ca_leaf_kit(p, "site-1", tmp_path)
    assert _cert(kit).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(IdentityRejected, match="CA:TRUE"):
        identity_from_certificate(_cert(kit))


def test_no_eku_kit(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.no_eku_kit(p, "site-2", tmp_path)
    with pytest.raises(x509.ExtensionNotFound):
        _cert(kit).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    with pytest.raises(IdentityRejected, match="extended key usage"):
        identity_from_certificate(_cert(kit))


def test_server_auth_only_kit(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.server_auth_only_kit(p, "lead@org_a.com", tmp_path)
    eku = _cert(kit).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(IdentityRejected):
        identity_from_certificate(_cert(kit), ParticipantType.ADMIN)


def test_foreign_ca_kit_keeps_our_root(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.foreign_ca_kit(p, "site-1", tmp_path)
    ours = _root(kit)
    assert ours == _root(p.kits["site-1"])
    assert _cert(kit).issuer != ours.subject
    with pytest.raises((ValueError, TypeError)):
        _cert(kit).verify_directly_issued_by(ours)
    verify_kit(kit, p.ca_fingerprint)


def test_foreign_project_is_whole_but_not_ours(
    p: ProvisionResult, foreign: ProvisionResult
) -> None:
    assert foreign.ca_fingerprint != p.ca_fingerprint
    assert set(foreign.kits) == set(p.kits)
    verify_kit(foreign.kits["site-1"], foreign.ca_fingerprint)


def test_wrong_type_kit_holds_a_site_certificate_in_an_admin_kit(
    p: ProvisionResult, tmp_path: Path
) -> None:
    kit = kf.wrong_type_kit(p, "admin@org_a.com", tmp_path)
    assert load_kit(kit).type is ParticipantType.ADMIN
    identity = identity_from_certificate(_cert(kit))
    assert (identity.name, identity.type) == ("admin@org_a.com", ParticipantType.SITE)
    with pytest.raises(IdentityRejected):
        identity_from_certificate(_cert(kit), ParticipantType.ADMIN)


def test_loose_key_kit(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.loose_key_kit(p, "site-1", tmp_path)
    assert stat.S_IMODE(os.stat(load_kit(kit).key_path).st_mode) == 0o644
    verify_kit(kit, p.ca_fingerprint)  # modes are not part of the signature


def test_mismatched_key_kit(p: ProvisionResult, tmp_path: Path) -> None:
    kit = kf.mismatched_key_kit(p, "site-1", tmp_path)
    assert not _key_matches(kit)
    assert stat.S_IMODE(os.stat(load_kit(kit).key_path).st_mode) == 0o600


def test_revoke_participant_lists_the_old_serial(tmp_path: Path, project_yml: Path) -> None:
    first = provision(project_yml, tmp_path)
    old = format(_cert(first.kits["site-2"]).serial_number, "x")
    again = kf.revoke_participant(first, "site-2")
    revoked = json.loads((again.kits["localhost"] / "startup" / "revoked.json").read_text())
    assert revoked["serials"] == [old] and again.revoked == ["site-2"]
    removed = kf.revoke_participant(again, "site-1", remove=True)
    assert "site-1" not in removed.kits and len(removed.revoked_serials) == 2
