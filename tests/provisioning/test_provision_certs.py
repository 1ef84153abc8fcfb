"""Every property of the CA and the leaf certificates, checked with cryptography."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from flare_protocol.identity import ParticipantType, Role, identity_from_certificate
from flare_protocol.kit import load_kit
from provisioning import ProvisionResult, provision

SITES = ["site-1", "site-2"]
ADMINS = {
    "admin@org_a.com": Role.PROJECT_ADMIN,
    "lead@org_a.com": Role.LEAD,
    "lead@org_b.com": Role.LEAD,
    "orgadmin@org_a.com": Role.ORG_ADMIN,
    "member@org_b.com": Role.MEMBER,
}


def _cert(kit: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(load_kit(kit).cert_path.read_bytes())


def _root(p: ProvisionResult) -> x509.Certificate:
    return x509.load_pem_x509_certificate(load_kit(p.kits["site-1"]).root_ca_path.read_bytes())


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def test_root_ca_is_a_critical_ca_with_path_length_zero(provisioned: ProvisionResult) -> None:
    root = _root(provisioned)
    bc = _ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    assert _ext(root, x509.SubjectKeyIdentifier).value.digest
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)


def test_root_ca_defaults_to_ec_p256_valid_ten_years(provisioned: ProvisionResult) -> None:
    root = _root(provisioned)
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    span = root.not_valid_after_utc - root.not_valid_before_utc
    assert span == timedelta(days=3650)
    assert root.not_valid_before_utc.tzinfo is timezone.utc
    assert root.not_valid_before_utc <= datetime.now(timezone.utc)


@pytest.mark.parametrize("name", ["localhost", *SITES, *ADMINS])
def test_leaf_is_not_a_ca_and_has_critical_key_usage(
    provisioned: ProvisionResult, name: str
) -> None:
    cert = _cert(provisioned.kits[name])
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False and bc.value.path_length is None
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_encipherment  # EC key: no key transport
    assert not ku.value.key_cert_sign and not ku.value.crl_sign


@pytest.mark.parametrize("name", ["localhost", *SITES, *ADMINS])
def test_leaf_names_its_holder_and_chains_to_the_root(
    provisioned: ProvisionResult, name: str
) -> None:
    cert, root = _cert(provisioned.kits[name]), _root(provisioned)
    kit = load_kit(provisioned.kits[name])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == kit.org
    assert cert.issuer == root.subject
    cert.verify_directly_issued_by(root)
    ski = _ext(root, x509.SubjectKeyIdentifier).value
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        cert.public_key()
    )


@pytest.mark.parametrize("name", ["localhost", *SITES, *ADMINS])
def test_leaf_is_valid_one_year_in_utc_with_a_large_random_serial(
    provisioned: ProvisionResult, name: str
) -> None:
    cert = _cert(provisioned.kits[name])
    now = datetime.now(timezone.utc)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=365)
    assert 100 < cert.serial_number.bit_length() <= 159


def test_serials_are_all_different(provisioned: ProvisionResult) -> None:
    serials = {_cert(k).serial_number for k in provisioned.kits.values()}
    assert len(serials) == len(provisioned.kits)


def test_server_certificate_is_server_auth_with_every_dialled_name(
    provisioned: ProvisionResult,
) -> None:
    cert = _cert(provisioned.kits["localhost"])
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    identity = identity_from_certificate(cert, ParticipantType.SERVER)
    assert identity.role is None and identity.type is ParticipantType.SERVER


@pytest.mark.parametrize("name", SITES)
def test_site_certificate_is_client_auth_with_site_identity(
    provisioned: ProvisionResult, name: str
) -> None:
    cert = _cert(provisioned.kits[name])
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []  # a site names no host
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:flare:site:{name}"]
    identity = identity_from_certificate(cert, ParticipantType.SITE)
    assert (identity.name, identity.type, identity.role) == (name, ParticipantType.SITE, None)


@pytest.mark.parametrize(("name", "role"), list(ADMINS.items()))
def test_admin_certificate_binds_its_role(
    provisioned: ProvisionResult, name: str, role: Role
) -> None:
    cert = _cert(provisioned.kits[name])
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == [name]
    identity = identity_from_certificate(cert, ParticipantType.ADMIN)
    assert (identity.type, identity.role) == (ParticipantType.ADMIN, role)


@pytest.mark.parametrize("name", [*SITES, *ADMINS])
def test_clients_pass_a_webpki_client_verifier(provisioned: ProvisionResult, name: str) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store([_root(provisioned)]))
        .time(datetime.now(timezone.utc))
        .build_client_verifier()
    )
    verified = verifier.verify(_cert(provisioned.kits[name]), [])
    assert verified.chain[-1] == _root(provisioned)


@pytest.mark.parametrize(
    "address", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
)
def test_server_passes_a_webpki_server_verifier_for_each_address(
    provisioned: ProvisionResult, address: x509.GeneralName
) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store([_root(provisioned)]))
        .time(datetime.now(timezone.utc))
        .build_server_verifier(address)  # type: ignore[arg-type]
    )
    assert verifier.verify(_cert(provisioned.kits["localhost"]), [])[-1] == _root(provisioned)


def test_server_verifier_refuses_a_name_not_in_the_sans(provisioned: ProvisionResult) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store([_root(provisioned)]))
        .build_server_verifier(x509.DNSName("evil.example.org"))
    )
    with pytest.raises(VerificationError):
        verifier.verify(_cert(provisioned.kits["localhost"]), [])


def test_a_site_certificate_does_not_verify_as_a_server(provisioned: ProvisionResult) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store([_root(provisioned)]))
        .build_server_verifier(x509.DNSName("site-1"))
    )
    with pytest.raises(VerificationError):
        verifier.verify(_cert(provisioned.kits["site-1"]), [])


@pytest.mark.parametrize(
    ("key_type", "check"),
    [
        (
            "ec-p384",
            lambda k: isinstance(k, ec.EllipticCurvePublicKey) and k.curve.name == "secp384r1",
        ),
        ("rsa-2048", lambda k: isinstance(k, rsa.RSAPublicKey) and k.key_size == 2048),
    ],
)
def test_key_types_apply_to_ca_and_leaves(
    tmp_path: Path, project_yml: Path, key_type: str, check
) -> None:
    result = provision(project_yml, tmp_path, key_type=key_type)
    assert check(_root(result).public_key())
    for kit in result.kits.values():
        cert = _cert(kit)
        assert check(cert.public_key())
        cert.verify_directly_issued_by(_root(result))
    if key_type.startswith("rsa"):
        ku = _ext(_cert(result.kits["site-1"]), x509.KeyUsage).value
        assert ku.digital_signature and ku.key_encipherment


def test_validity_is_configurable_and_anchored_at_now(tmp_path: Path, project_yml: Path) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    result = provision(project_yml, tmp_path, ca_days=30, cert_days=7, now=now)
    root, leaf = _root(result), _cert(result.kits["site-1"])
    assert root.not_valid_before_utc == now - timedelta(minutes=5)
    assert root.not_valid_after_utc == root.not_valid_before_utc + timedelta(days=30)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=7)
