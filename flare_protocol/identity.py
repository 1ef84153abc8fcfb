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
CA:FALSE, the extended key usage and the participant type for the endpoint called.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
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


def identity_from_certificate(
    cert: x509.Certificate, expected_type: ParticipantType | None = None
) -> Identity:
    """Read and check the identity a (chain-verified) certificate carries.

    Raises:
        IdentityRejected: the certificate is a CA, lacks the extended key usage its type
            needs, carries no flare identity, or is not of ``expected_type``.
    """
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
