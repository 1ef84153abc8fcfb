"""IdentityChecker without a network: the second line behind the TLS handshake."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

import tests.kit_factory as kf
from flare_protocol.errors import IdentityRejected, KitError
from flare_protocol.identity import OID_ADMIN_ROLE, OID_PARTICIPANT_TYPE, ParticipantType
from flare_server.identity_check import IdentityChecker, load_revoked, parse_serial


def _pem(kit: Path) -> bytes:
    startup = Path(kit) / "startup"
    name = "server.crt" if (startup / "server.crt").exists() else "client.crt"
    return (startup / name).read_bytes()


@pytest.fixture(scope="module")
def root(provisioned) -> x509.Certificate:
    return kf.project_ca(provisioned).cert


@pytest.fixture
def admin_checker(root) -> IdentityChecker:
    return IdentityChecker(ParticipantType.ADMIN, root)


def test_identity_comes_from_the_certificate(kits, admin_checker):
    ident = admin_checker.check_pem(_pem(kits["lead@org_b.com"]))
    assert (ident.name, ident.org, ident.role.value) == ("lead@org_b.com", "org_b", "lead")


def test_server_auth_only_leaf_is_refused(provisioned, tmp_path, admin_checker):
    kit = kf.server_auth_only_kit(provisioned, "admin@org_a.com", tmp_path)
    with pytest.raises(IdentityRejected, match="clientAuth"):
        admin_checker.check_pem(_pem(kit))


def test_server_certificate_is_refused_on_the_admin_and_site_endpoints(kits, root):
    for ptype in (ParticipantType.ADMIN, ParticipantType.SITE):
        with pytest.raises(IdentityRejected, match="server certificate cannot call"):
            IdentityChecker(ptype, root).check_pem(_pem(kits["localhost"]))


def test_a_rejection_is_cached_and_still_rejected(provisioned, tmp_path, admin_checker):
    checker = admin_checker
    pem = _pem(kf.ca_leaf_kit(provisioned, "admin@org_a.com", tmp_path))
    for _ in range(2):
        with pytest.raises(IdentityRejected, match="CA:TRUE"):
            checker.check_pem(pem)


def test_revocation_applies_to_cached_identities(kits, admin_checker):
    pem = _pem(kits["member@org_b.com"])
    checker = admin_checker
    ident = checker.check_pem(pem)
    checker.set_revoked({ident.serial})
    with pytest.raises(IdentityRejected, match="revoked"):
        checker.check_pem(pem)


def test_a_repeated_call_is_served_from_the_cache(kits, admin_checker):
    # Not timed (a benchmark's job): the cache hit returns the identity parsed the first time.
    pem = _pem(kits["member@org_b.com"])
    first = admin_checker.check_pem(pem)
    assert all(admin_checker.check_pem(pem) is first for _ in range(3))


def test_auth_context_without_a_certificate_is_refused(admin_checker):
    with pytest.raises(IdentityRejected, match="no client certificate"):
        admin_checker.check_auth_context({})


# -- issue 8, items 5 and 6: only the root's own leaves; every malformed one a rejection ----


def test_a_leaf_issued_through_a_sub_ca_is_refused_naming_its_issuer(
    provisioned, tmp_path, admin_checker
):
    pem = _pem(kf.sub_ca_kit(provisioned, "admin@org_a.com", tmp_path))
    with pytest.raises(IdentityRejected) as info:
        admin_checker.check_pem(pem)
    assert "not issued directly by the project root CA (O=testproj,CN=testproj root CA)" in (
        info.value.message
    )
    assert "but by O=testproj,CN=testproj intermediate CA" in info.value.message


def test_a_leaf_naming_the_root_as_issuer_but_signed_by_another_key_is_refused(
    provisioned, tmp_path, root, admin_checker
):
    from provisioning.certs import create_ca

    impostor = create_ca("testproj")  # the same subject as our root, another key
    assert impostor.cert.subject == root.subject
    pem = _pem(kf.reissued_kit(provisioned, "admin@org_a.com", tmp_path, issuer=impostor))
    with pytest.raises(IdentityRejected, match="not the project root CA's key"):
        admin_checker.check_pem(pem)


# Standard extensions that are duplicated or malformed fail the TLS handshake (BoringSSL:
# "invalid or inconsistent certificate extension"); the checker must refuse them anyway.
STANDARD = {
    "duplicated extended key usage": {"duplicate": x509.ExtensionOID.EXTENDED_KEY_USAGE},
    "duplicated basic constraints": {"duplicate": x509.ExtensionOID.BASIC_CONSTRAINTS},
    "basic constraints not a SEQUENCE": {
        "values": {x509.ExtensionOID.BASIC_CONSTRAINTS: b"\x04\x00"}
    },
    "extended key usage an INTEGER": {
        "values": {x509.ExtensionOID.EXTENDED_KEY_USAGE: b"\x02\x01\x01"}
    },
    "subject alternative name truncated": {
        "values": {x509.ExtensionOID.SUBJECT_ALTERNATIVE_NAME: b"\x30\x03\x80\x01"}
    },
    "duplicated admin role": {"duplicate": OID_ADMIN_ROLE},
    "duplicated participant type": {"duplicate": OID_PARTICIPANT_TYPE},
}


@pytest.mark.parametrize("shape", STANDARD)
def test_a_malformed_certificate_is_an_identity_rejection_never_another_error(
    provisioned, tmp_path, admin_checker, shape
):
    kit = kf.tampered_extensions_kit(provisioned, "admin@org_a.com", tmp_path, **STANDARD[shape])
    for _ in range(2):  # the rejection is cached, and raised again
        with pytest.raises(IdentityRejected, match="^malformed certificate: "):
            admin_checker.check_pem(_pem(kit))


def test_garbage_instead_of_a_certificate_is_an_identity_rejection(admin_checker):
    with pytest.raises(IdentityRejected, match="unparseable client certificate"):
        admin_checker.check_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_revoked_list_accepts_hex_with_colons_and_prefix(tmp_path, kits):
    serial = x509.load_pem_x509_certificate(_pem(kits["site-1"])).serial_number
    path = tmp_path / "revoked.json"
    hexed = f"{serial:x}"
    path.write_text(f'{{"serials": ["{hexed}", "0x0A", "0b:0c"]}}')
    assert load_revoked(path) == {serial, 10, 0x0B0C}
    assert parse_serial("0A:1b") == 0x0A1B
    assert load_revoked(tmp_path / "missing.json") == frozenset()


def test_a_malformed_revoked_list_stops_start_up(tmp_path):
    path = tmp_path / "revoked.json"
    path.write_text('{"serials": "abc"}')
    with pytest.raises(KitError, match="revocation list"):
        load_revoked(path)


# -- issue 10: every rejection of the flare identity extensions and subject ---------------

ADMIN = "admin@org_a.com"


def _utf8(text: bytes) -> bytes:
    return b"\x0c" + bytes([len(text)]) + text


EXTENSIONS = {
    "no basic constraints": (
        ADMIN, {"drop": [x509.ExtensionOID.BASIC_CONSTRAINTS]}, "no basicConstraints"
    ),
    "no participant type": (
        ADMIN, {"drop": [OID_PARTICIPANT_TYPE]}, "carries no flare participant type"
    ),
    "unknown participant type": (
        ADMIN, {"values": {OID_PARTICIPANT_TYPE: _utf8(b"robot")}}, "unknown participant type"
    ),
    "participant type not a UTF8String": (
        ADMIN, {"values": {OID_PARTICIPANT_TYPE: b"\x04\x05admin"}}, "not a DER UTF8String"
    ),
    "participant type of the wrong length": (
        ADMIN, {"values": {OID_PARTICIPANT_TYPE: b"\x0c\x09admin"}}, "length mismatch"
    ),
    "participant type not UTF-8": (
        ADMIN, {"values": {OID_PARTICIPANT_TYPE: b"\x0c\x02\xff\xfe"}}, "malformed flare identity"
    ),
    "participant type empty": (
        ADMIN, {"values": {OID_PARTICIPANT_TYPE: b""}}, "not a DER UTF8String"
    ),
    "admin without a role": (ADMIN, {"drop": [OID_ADMIN_ROLE]}, "carries no role"),
    "unknown admin role": (
        ADMIN, {"values": {OID_ADMIN_ROLE: _utf8(b"emperor")}}, "unknown admin role 'emperor'"
    ),
    "site with an admin role": (
        "site-1",
        {"values": {OID_ADMIN_ROLE: _utf8(b"project_admin")}},
        "a site certificate must not carry an admin role",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", EXTENSIONS)
def test_a_bad_flare_identity_extension_is_refused_naming_the_problem(
    provisioned, tmp_path, root, case
):
    name, tamper, needle = EXTENSIONS[case]
    kit = kf.tampered_extensions_kit(provisioned, name, tmp_path, **tamper)
    ptype = ParticipantType.SITE if name == "site-1" else ParticipantType.ADMIN
    with pytest.raises(IdentityRejected) as info:
        IdentityChecker(ptype, root).check_pem(_pem(kit))
    assert needle in info.value.message


SUBJECTS = {
    "two common names": (
        [(NameOID.COMMON_NAME, ADMIN), (NameOID.COMMON_NAME, "lead@org_a.com"),
         (NameOID.ORGANIZATION_NAME, "org_a")],
        "exactly one",
    ),
    "no organization": ([(NameOID.COMMON_NAME, ADMIN)], "exactly one"),
}  # fmt: skip


@pytest.mark.parametrize("case", SUBJECTS)
def test_a_subject_without_exactly_one_name_and_org_is_refused(
    provisioned, tmp_path, admin_checker, case
):
    attributes, needle = SUBJECTS[case]
    subject = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    kit = kf.tampered_extensions_kit(provisioned, ADMIN, tmp_path, subject=subject)
    with pytest.raises(IdentityRejected) as info:
        admin_checker.check_pem(_pem(kit))
    assert needle in info.value.message
