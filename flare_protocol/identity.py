"""Who a participant is, as bound inside its CA-signed certificate.

Theory of operation. Provisioning writes two non-critical X.509 extensions into every
leaf certificate, under a private OID arc (a UUID-derived ``2.25`` OID, so no
registration is needed and no other issuer's extension can collide with it):

* ``OID_PARTICIPANT_TYPE``: a DER UTF8String, ``server``, ``site`` or ``admin``;
* ``OID_ADMIN_ROLE``: a DER UTF8String with the admin's role (admins only).

Because they are extensions and not subject attributes, no participant name can imitate
them: a CN of ``site-1,role=project_admin`` is just an odd (and, by provisioning's
rules, refused) name. They are non-critical so that TLS stacks which do not know them
still complete the handshake; our own code then refuses any certificate that lacks them.

:func:`identity_from_certificate` is the one place that turns a verified peer
certificate into an :class:`Identity`. It re-checks what the TLS handshake does not:
CA:FALSE, the extended key usage and the participant type for the endpoint called. It is
total: a certificate it cannot parse (a duplicated or malformed extension, an odd name)
is an :class:`IdentityRejected` naming the problem, never another exception.
:func:`check_issued_by_root` refuses a leaf that the project root did not sign itself:
grpc's handshake accepts a chain through an intermediate CA that the root's path length
(0) forbids, and the server sees only the leaf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flare_protocol.errors import IdentityRejected

_ARC = "2.25.216673667776487682624409620029910512491"
OID_PARTICIPANT_TYPE = x509.ObjectIdentifier(f"{_ARC}.1")
OID_ADMIN_ROLE = x509.ObjectIdentifier(f"{_ARC}.2")


class ParticipantType(str, enum.Enum):
    """The kind of participant a certificate was issued to."""

    SERVER = "server"
    SITE = "site"
    ADMIN = "admin"

    @property
    def with_article(self) -> str:
        """``"a server"``, ``"a site"``, ``"an admin"``: for messages."""
        return f"{'an' if self.value[0] in 'aeiou' else 'a'} {self.value}"


class Role(str, enum.Enum):
    """An admin's role, NVIDIA FLARE's names."""

    PROJECT_ADMIN = "project_admin"
    ORG_ADMIN = "org_admin"
    LEAD = "lead"
    MEMBER = "member"


@dataclass(frozen=True)
class Identity:
    """A participant as its verified certificate names it."""

    name: str
    org: str
    type: ParticipantType
    role: Role | None
    serial: int
    not_before: datetime
    not_after: datetime


def _der_utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    n = len(data)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x0c" + length + data


def _parse_der_utf8(der: bytes) -> str:
    if len(der) < 2 or der[0] != 0x0C:
        raise ValueError("not a DER UTF8String")
    first = der[1]
    if first < 0x80:
        start, n = 2, first
    else:
        width = first & 0x7F
        start = 2 + width
        n = int.from_bytes(der[2:start], "big")
    if start + n != len(der):
        raise ValueError("DER UTF8String length mismatch")
    return der[start : start + n].decode("utf-8")


def identity_extensions(
    participant_type: ParticipantType, role: Role | None = None
) -> list[x509.UnrecognizedExtension]:
    """The extensions that bind type (and an admin's role) into a certificate."""
    exts = [x509.UnrecognizedExtension(OID_PARTICIPANT_TYPE, _der_utf8(participant_type.value))]
    if participant_type is ParticipantType.ADMIN:
        if role is None:
            raise ValueError("an admin certificate needs a role")
        exts.append(x509.UnrecognizedExtension(OID_ADMIN_ROLE, _der_utf8(Role(role).value)))
    elif role is not None:
        raise ValueError("only admin certificates carry a role")
    return exts


def _single_attr(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    attrs = cert.subject.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        raise IdentityRejected(f"certificate subject must have exactly one {label}")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def _custom_ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise IdentityRejected(f"unexpected extension type for {oid.dotted_string}")
    try:
        return _parse_der_utf8(value.value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IdentityRejected(f"malformed flare identity extension: {exc}") from exc


def check_issued_by_root(cert: x509.Certificate, root: x509.Certificate) -> None:
    """Refuse ``cert`` unless the project ``root`` issued it directly.

    The issuer must be the root's subject, the authority key identifier (when present)
    the root's subject key identifier, and the signature must verify with the root's key.
    Raises:
        IdentityRejected: naming the issuer found.
    """
    try:
        issuer = cert.issuer.rfc4514_string()
        expected = root.subject.rfc4514_string()
        if cert.issuer != root.subject:
            raise IdentityRejected(
                f"certificate was not issued directly by the project root CA ({expected}) "
                f"but by {issuer}: intermediate CAs are not accepted"
            )
        authority = _key_id(cert, x509.AuthorityKeyIdentifier)
        root_key = _key_id(root, x509.SubjectKeyIdentifier)
        if authority is not None and root_key is not None and authority != root_key:
            raise IdentityRejected(
                f"certificate names {issuer} as its issuer but not the project root CA's key "
                "(authority key identifier): it was not issued directly by the project root CA"
            )
        cert.verify_directly_issued_by(root)
    except IdentityRejected:
        raise
    except InvalidSignature:
        raise IdentityRejected(
            f"certificate names the project root CA ({expected}) as its issuer but its "
            "signature does not verify with the root's key"
        ) from None
    except Exception as exc:  # a duplicated or malformed extension, an unsupported key ...
        raise _malformed(exc) from None


def _key_id(
    cert: x509.Certificate,
    kind: type[x509.AuthorityKeyIdentifier] | type[x509.SubjectKeyIdentifier],
) -> bytes | None:
    """The certificate's authority or subject key identifier, None when it has none."""
    try:
        value = cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    return value.digest


def _malformed(exc: Exception) -> IdentityRejected:
    if isinstance(exc, x509.DuplicateExtension):
        return IdentityRejected(
            f"malformed certificate: duplicate extension {exc.oid.dotted_string}"
        )
    return IdentityRejected(f"malformed certificate: {type(exc).__name__}: {exc}")


def identity_from_certificate(
    cert: x509.Certificate, expected_type: ParticipantType | None = None
) -> Identity:
    """Read and check the identity a (chain-verified) certificate carries.

    Raises:
        IdentityRejected: the certificate is a CA, lacks the extended key usage its type
            needs, carries no flare identity, is not of ``expected_type``, or cannot be
            parsed (a duplicated or malformed extension, ...): never another exception.
    """
    try:
        return _identity(cert, expected_type)
    except IdentityRejected:
        raise
    except Exception as exc:  # a duplicated or malformed extension, an odd name ...
        raise _malformed(exc) from None


def _identity(cert: x509.Certificate, expected_type: ParticipantType | None) -> Identity:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise IdentityRejected("certificate has no basicConstraints (CA:FALSE required)") from None
    if bc.ca:
        raise IdentityRejected("certificate is a CA certificate (CA:TRUE); a leaf is required")

    raw_type = _custom_ext(cert, OID_PARTICIPANT_TYPE)
    if raw_type is None:
        raise IdentityRejected("certificate carries no flare participant type")
    try:
        ptype = ParticipantType(raw_type)
    except ValueError:
        raise IdentityRejected(f"unknown participant type {raw_type!r} in certificate") from None

    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise IdentityRejected("certificate has no extended key usage") from None
    needed = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if ptype is ParticipantType.SERVER
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    if needed not in eku:
        raise IdentityRejected(
            f"certificate of {ptype.with_article} lacks the {needed._name} usage"
        )

    role: Role | None = None
    raw_role = _custom_ext(cert, OID_ADMIN_ROLE)
    if ptype is ParticipantType.ADMIN:
        if raw_role is None:
            raise IdentityRejected("admin certificate carries no role")
        try:
            role = Role(raw_role)
        except ValueError:
            raise IdentityRejected(f"unknown admin role {raw_role!r} in certificate") from None
    elif raw_role is not None:
        raise IdentityRejected(f"a {ptype.value} certificate must not carry an admin role")

    if expected_type is not None and ptype is not expected_type:
        raise IdentityRejected(
            f"{ptype.with_article} certificate cannot call the {expected_type.value} endpoint"
        )

    return Identity(
        name=_single_attr(cert, NameOID.COMMON_NAME, "common name"),
        org=_single_attr(cert, NameOID.ORGANIZATION_NAME, "organization"),
        type=ptype,
        role=role,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )
