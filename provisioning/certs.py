"""Keys, the project CA and the one builder every leaf certificate comes from.

Server, site and admin certificates differ only in their extended key usage, their
subject alternative names and the identity extensions (type, admin role). The keyword
overrides of :func:`issue_leaf` (validity, ``is_ca``, ``eku``) exist so that tests can
make honest bad certificates with the same code path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flare_protocol.identity import ParticipantType, Role, identity_extensions

__all__ = [
    "DEFAULT_CA_DAYS",
    "DEFAULT_CERT_DAYS",
    "KEY_TYPES",
    "CertificateAuthority",
    "PrivateKey",
    "create_ca",
    "default_eku",
    "generate_key",
    "issue_leaf",
    "key_pem",
    "key_type_of",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")
DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 365
#: Backdating absorbs clock skew between the provisioning host and the participants.
_BACKDATE = timedelta(minutes=5)


class _Default:
    """Marker: use the extended key usage the participant type needs."""


_DEFAULT_EKU = _Default()


def generate_key(key_type: str) -> PrivateKey:
    """A new private key of one of :data:`KEY_TYPES`."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown key type {key_type!r} (use one of {', '.join(KEY_TYPES)})")


def key_type_of(key: PrivateKey) -> str:
    """The :data:`KEY_TYPES` name of a key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}[key.curve.name]
    return f"rsa-{key.key_size}"


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of a key, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("'now' must be timezone-aware (UTC)")
    return now.astimezone(timezone.utc)


@dataclass(frozen=True)
class CertificateAuthority:
    """The project's root CA: its key (never written to a kit) and certificate."""

    key: PrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def create_ca(
    project: str,
    *,
    key_type: str = "ec-p256",
    days: int = DEFAULT_CA_DAYS,
    now: datetime | None = None,
) -> CertificateAuthority:
    """A new self-signed root CA for ``project`` (CA:TRUE, path length 0)."""
    key = generate_key(key_type)
    start = _utc(now) - _BACKDATE
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{project} root CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _hash_for(key))
    )
    return CertificateAuthority(key=key, cert=cert)


def default_eku(participant_type: ParticipantType) -> list[x509.ObjectIdentifier]:
    """serverAuth for the server, clientAuth for sites and admins."""
    if participant_type is ParticipantType.SERVER:
        return [ExtendedKeyUsageOID.SERVER_AUTH]
    return [ExtendedKeyUsageOID.CLIENT_AUTH]


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_leaf(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    name: str,
    org: str,
    participant_type: ParticipantType,
    role: Role | None = None,
    host_names: Sequence[str] = (),
    days: int = DEFAULT_CERT_DAYS,
    now: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    is_ca: bool = False,
    eku: Sequence[x509.ObjectIdentifier] | None | _Default = _DEFAULT_EKU,
    serial: int | None = None,
) -> x509.Certificate:
    """Issue a participant certificate: the one builder for server, site and admin.

    Args:
        ca: the issuing CA.
        public_key: the participant's public key.
        name: CN (participant name); org: O.
        participant_type, role: bound with :func:`identity_extensions`.
        host_names: server only: SANs beyond ``name`` (IP addresses become IP SANs).
            Sites get ``urn:flare:site:<name>`` as a URI SAN, admins their email as an
            RFC 822 SAN.
        days: validity length from ``now`` (backdated a few minutes for clock skew).
        not_before, not_after: explicit validity (tests: expired, not yet valid).
        is_ca: tests only: a CA:TRUE leaf.
        eku: tests only: explicit extended key usages, or ``None`` for no EKU extension.
        serial: the serial number; a random 159-bit one by default.
    """
    start = not_before if not_before is not None else _utc(now) - _BACKDATE
    if not_after is not None:
        end = not_after
    else:  # never outlive the issuer
        end = min(start + timedelta(days=days), ca.cert.not_valid_after_utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    )
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    usages = default_eku(participant_type) if isinstance(eku, _Default) else eku
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    # Every leaf names its holder in a SAN too (RFC 5280 verifiers require one): the
    # server every address clients dial, an admin its email address, a site a URN (not a
    # DNS name: a site is never dialled, so its certificate must not name a host).
    if participant_type is ParticipantType.SERVER:
        sans = [_san(h) for h in [name, *(h for h in host_names if h != name)]]
    elif participant_type is ParticipantType.ADMIN:
        sans = [x509.RFC822Name(name)]
    else:
        sans = [x509.UniformResourceIdentifier(f"urn:flare:site:{name}")]
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext in identity_extensions(participant_type, role):
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(ca.key, _hash_for(ca.key))
