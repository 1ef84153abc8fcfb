"""Pre-flight: check a startup kit locally before any network call.

Theory of operation. A TLS stack that refuses a certificate says little (grpcio reports
``UNAVAILABLE: Socket closed`` for most handshake failures), so every process that starts
from a kit (the admin Session, the server, a site) first runs :func:`check_kit`. It reads
the kit's files once and checks, in the order a user would fix them:

1. every needed file is present (:class:`KitIncomplete`);
2. the private key is not readable or writable by group or others
   (:class:`KeyFilePermissions`, naming ``chmod 600 <path>``);
3. the key belongs to the certificate (:class:`KeyMismatch`);
4. the certificate was issued by the kit's root CA, by issuer name and signature
   (:class:`CertificateNotTrusted`);
5. the certificate and the root are within their validity (:class:`CertificateExpired`,
   :class:`CertificateNotYetValid`, naming the dates in UTC ISO 8601);
6. the certificate is a leaf of the kit's participant type with the right usage
   (:class:`KitError` otherwise; the server refuses such a certificate too);
7. for an admin, the username equals the certificate's CN (:class:`UsernameMismatch`);
8. the signature over ``startup/`` (:class:`KitTampered` for an edited, added, removed
   or symlinked file), last, so that the specific causes above are named first.

Nothing is cached between calls: it runs once per start or session open and costs about
a millisecond.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from flare_protocol.errors import (
    CertificateExpired,
    CertificateNotTrusted,
    CertificateNotYetValid,
    IdentityRejected,
    KeyFilePermissions,
    KeyMismatch,
    KitError,
    KitIncomplete,
    UsernameMismatch,
)
from flare_protocol.identity import identity_from_certificate
from flare_protocol.kit import Kit

__all__ = ["check_kit"]


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise KitIncomplete(
            f"the startup kit is missing {path}; re-download or re-provision the kit",
            path=str(path),
        ) from None
    except OSError as exc:
        raise KitError(f"cannot read kit file {path}: {exc.strerror}", path=str(path)) from exc


def _check_key_mode(path: Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        raise KitIncomplete(
            f"the startup kit is missing its private key {path}", path=str(path)
        ) from None
    if mode & 0o077:
        raise KeyFilePermissions(
            f"private key {path} has mode {mode:04o}: it must not be readable or writable "
            f"by group or others; fix it with: chmod 600 {path}",
            path=str(path),
            mode=f"{mode:04o}",
        )


def _load_cert(path: Path, data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KitError(f"{path} is not a PEM certificate: {exc}", path=str(path)) from exc


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _check_validity(cert: x509.Certificate, path: Path, now: datetime, what: str) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now > end:
        raise CertificateExpired(
            f"{what} {path} expired on {_iso(end)} (valid {_iso(start)} to {_iso(end)}, "
            f"now {_iso(now)}); ask the project admin for a new startup kit",
            path=str(path),
            not_before=_iso(start),
            not_after=_iso(end),
        )
    if now < start:
        raise CertificateNotYetValid(
            f"{what} {path} is not valid before {_iso(start)} (valid {_iso(start)} to "
            f"{_iso(end)}, now {_iso(now)}); check this machine's clock",
            path=str(path),
            not_before=_iso(start),
            not_after=_iso(end),
        )


def _verify_signature(kit: Kit) -> None:
    try:
        from flare_protocol.signature import verify_kit
    except ImportError:  # the signature format is optional for pre-flight's other checks
        return
    verify_kit(kit.root)


def check_kit(
    kit: Kit,
    *,
    username: str | None = None,
    now: datetime | None = None,
    verify_signature: bool = True,
) -> x509.Certificate:
    """Check that ``kit`` can be used, before any network call; return its certificate.

    Args:
        kit: a kit loaded with :func:`flare_protocol.kit.load_kit`.
        username: for an admin kit, the name the user claims; must equal the CN.
        now: the time to check validity at (default: the current UTC time).
        verify_signature: also verify ``startup/signature.json`` (raises ``KitTampered``).

    Raises:
        KitIncomplete, KitTampered, KeyFilePermissions, KeyMismatch, CertificateNotTrusted,
        CertificateExpired, CertificateNotYetValid, UsernameMismatch, KitError: each
        naming the file (``path`` attribute) and the fix.
    """
    moment = now or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    root_path, cert_path, key_path = kit.root_ca_path, kit.cert_path, kit.key_path
    root_pem = _read_file(root_path)
    cert_pem = _read_file(cert_path)
    _check_key_mode(key_path)
    key_pem = _read_file(key_path)

    root = _load_cert(root_path, root_pem)
    cert = _load_cert(cert_path, cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KitError(
            f"{key_path} is not an unencrypted PEM private key: {exc}", path=str(key_path)
        ) from exc

    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise KeyMismatch(
            f"private key {key_path} does not belong to certificate {cert_path}; "
            "the kit mixes files of two participants or provisioning runs: use one kit's files",
            path=str(key_path),
            cert_path=str(cert_path),
        )

    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateNotTrusted(
            f"certificate {cert_path} (issuer {cert.issuer.rfc4514_string()}) was not issued "
            f"by the kit's root CA {root_path} ({root.subject.rfc4514_string()}): the kit "
            "mixes files of two projects; use the kit provisioned for this project",
            path=str(cert_path),
            issuer=cert.issuer.rfc4514_string(),
        ) from exc

    _check_validity(root, root_path, moment, "root CA certificate")
    _check_validity(cert, cert_path, moment, "certificate")

    try:
        identity_from_certificate(cert, expected_type=kit.type)
    except IdentityRejected as exc:
        raise KitError(
            f"certificate {cert_path} cannot be used in this {kit.type.value} kit: {exc.message}; "
            "ask the project admin for a correctly provisioned kit",
            path=str(cert_path),
        ) from exc

    if username is not None:
        cn = _common_name(cert)
        if username != cn:
            raise UsernameMismatch(
                f"username {username!r} does not match the kit's certificate, which was "
                f"issued to {cn!r} ({cert_path}); pass username={cn!r} or use {username}'s kit",
                username=username,
                certificate_name=cn,
                path=str(cert_path),
            )
    if verify_signature:  # last: the specific checks above name a cause more precisely
        _verify_signature(kit)
    return cert
