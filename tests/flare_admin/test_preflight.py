"""Pre-flight: an unusable admin kit is refused locally, each cause with its own exception."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from flare_protocol.errors import (
    AuthenticationError,
    CertificateExpired,
    CertificateNotTrusted,
    CertificateNotYetValid,
    KeyFilePermissions,
    KeyMismatch,
    KitError,
    KitIncomplete,
    KitTampered,
    UsernameMismatch,
)
from flare_protocol.kit import load_kit
from flare_protocol.preflight import check_kit
from tests import kit_factory

ADMIN = "admin@org_a.com"


def test_a_fresh_admin_kit_passes_and_yields_its_certificate(provisioned):
    cert = check_kit(load_kit(provisioned.kits[ADMIN]), username=ADMIN)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == ADMIN


def test_server_and_site_kits_pass_without_a_username(provisioned):
    check_kit(load_kit(provisioned.kits["localhost"]))
    check_kit(load_kit(provisioned.kits["site-1"]))


@pytest.mark.parametrize("name", ["client.crt", "client.key", "rootCA.pem"])
def test_a_missing_kit_file_is_named(provisioned, tmp_path, name):
    kit_dir = kit_factory.copy_kit(provisioned, ADMIN, tmp_path)
    (kit_dir / "startup" / name).unlink()
    with pytest.raises(KitIncomplete) as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    assert info.value.path == str(kit_dir / "startup" / name)
    assert name in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_readable_by_others_is_refused_with_the_fix(provisioned, tmp_path, mode):
    kit_dir = kit_factory.loose_key_kit(provisioned, ADMIN, tmp_path, mode=mode)
    key = kit_dir / "startup" / "client.key"
    with pytest.raises(KeyFilePermissions) as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    assert f"chmod 600 {key}" in str(info.value)
    assert f"{mode:04o}" in str(info.value)
    assert info.value.path == str(key)


def test_a_key_mode_stricter_than_0600_is_accepted(provisioned, tmp_path):
    kit_dir = kit_factory.loose_key_kit(provisioned, ADMIN, tmp_path, mode=0o400)
    check_kit(load_kit(kit_dir), username=ADMIN)


def test_a_key_of_another_participant_is_a_key_mismatch(provisioned, tmp_path):
    kit_dir = kit_factory.mismatched_key_kit(provisioned, ADMIN, tmp_path)
    with pytest.raises(KeyMismatch) as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    assert "client.key" in str(info.value) and "client.crt" in str(info.value)


def test_a_certificate_from_a_foreign_ca_is_not_trusted(provisioned, tmp_path):
    kit_dir = kit_factory.foreign_ca_kit(provisioned, ADMIN, tmp_path)
    with pytest.raises(CertificateNotTrusted) as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    assert "rootCA.pem" in str(info.value)
    assert "foreign" in info.value.issuer


def test_an_expired_certificate_names_the_dates(provisioned, tmp_path):
    kit_dir = kit_factory.expired_kit(provisioned, ADMIN, tmp_path)
    with pytest.raises(CertificateExpired) as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
    assert f"expired on {yesterday}" in str(info.value)
    assert info.value.not_after.startswith(yesterday)


def test_a_not_yet_valid_certificate_names_the_start(provisioned, tmp_path):
    kit_dir = kit_factory.not_yet_valid_kit(provisioned, ADMIN, tmp_path)
    with pytest.raises(CertificateNotYetValid) as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert f"not valid before {tomorrow}" in str(info.value)
    assert "clock" in str(info.value)


def test_validity_is_checked_at_the_given_time(provisioned):
    kit = load_kit(provisioned.kits[ADMIN])
    with pytest.raises(CertificateExpired):
        check_kit(kit, now=datetime.now(timezone.utc) + timedelta(days=3660 * 2))
    with pytest.raises(CertificateNotYetValid):
        check_kit(kit, now=datetime(2000, 1, 1, tzinfo=timezone.utc))


def test_a_ca_true_leaf_is_refused(provisioned, tmp_path):
    kit_dir = kit_factory.ca_leaf_kit(provisioned, ADMIN, tmp_path)
    with pytest.raises(KitError, match="CA:TRUE") as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    assert info.value.path.endswith("client.crt")


def test_a_certificate_without_eku_is_refused(provisioned, tmp_path):
    kit_dir = kit_factory.no_eku_kit(provisioned, ADMIN, tmp_path)
    with pytest.raises(KitError, match="extended key usage"):
        check_kit(load_kit(kit_dir), username=ADMIN)


def test_a_site_certificate_in_an_admin_kit_is_refused(provisioned, tmp_path):
    kit_dir = kit_factory.wrong_type_kit(provisioned, ADMIN, tmp_path)
    with pytest.raises(KitError, match="site certificate"):
        check_kit(load_kit(kit_dir), username=ADMIN)


def test_a_username_that_is_not_the_certificate_cn_names_both(provisioned):
    with pytest.raises(UsernameMismatch) as info:
        check_kit(load_kit(provisioned.kits[ADMIN]), username="lead@org_a.com")
    assert "'lead@org_a.com'" in str(info.value) and f"'{ADMIN}'" in str(info.value)
    assert info.value.username == "lead@org_a.com"
    assert info.value.certificate_name == ADMIN
    assert isinstance(info.value, AuthenticationError)


def test_an_edited_signed_file_is_tampering(provisioned, tmp_path):
    kit_dir = kit_factory.copy_kit(provisioned, ADMIN, tmp_path)
    readme = kit_dir / "startup" / "README.md"
    readme.write_text(readme.read_text() + "\nedited\n")
    with pytest.raises(KitTampered) as info:
        check_kit(load_kit(kit_dir), username=ADMIN)
    assert info.value.path == str(readme)


def test_signature_verification_can_be_left_to_the_caller(provisioned, tmp_path):
    kit_dir = kit_factory.copy_kit(provisioned, ADMIN, tmp_path)
    (kit_dir / "startup" / "README.md").write_text("edited")
    check_kit(load_kit(kit_dir), username=ADMIN, verify_signature=False)


def test_a_kit_of_another_project_passes_locally(provisioned, tmp_path):
    """A whole foreign kit is self-consistent: only the server can refuse it."""
    other = kit_factory.foreign_project(provisioned, tmp_path)
    check_kit(load_kit(other.kits[ADMIN]), username=ADMIN)


def test_the_check_touches_no_file(provisioned):
    kit_dir = Path(provisioned.kits[ADMIN])
    before = {p: os.stat(p).st_mtime_ns for p in kit_dir.rglob("*")}
    check_kit(load_kit(kit_dir), username=ADMIN)
    assert {p: os.stat(p).st_mtime_ns for p in kit_dir.rglob("*")} == before
