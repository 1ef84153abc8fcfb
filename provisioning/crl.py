"""The project's signed revocation list: an X.509 CRL issued by the root CA.

Every provisioning run writes one, with the next CRL number (1, 2, 3 ... kept in
``state.json``), listing every serial the state records as revoked, to
``<workspace>/<project>/state/revocations.crl`` and into the new server kit's
``startup/revocations.crl`` (signed with the kit). A running server takes it from either
place with ``update_revocations`` (the admin command) and keeps it only when the root CA
signed it and its number is greater than the one in force, so an older list can never
replace a newer one. ``nextUpdate`` is the CA's own expiry: the list stays authoritative
until a newer number supersedes it (freshness is the number, not the dates).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.certs import CertificateAuthority, _hash_for
from provisioning.state import RevokedRecord

__all__ = ["CRL_FILE", "build_crl"]

#: The CRL's file name, in ``state/`` and in the server kit's ``startup/``.
CRL_FILE = "revocations.crl"

#: Why a certificate was revoked, as the CRL says it (``revoked``: no reason code).
_REASONS = {
    "superseded": x509.ReasonFlags.superseded,
    "removed": x509.ReasonFlags.cessation_of_operation,
    "expired": x509.ReasonFlags.superseded,
}


def build_crl(
    ca: CertificateAuthority, revoked: Iterable[RevokedRecord], *, number: int, now: datetime
) -> bytes:
    """The PEM of a CRL signed by ``ca`` listing ``revoked``, with CRL number ``number``."""
    last_update = now - timedelta(minutes=5)  # the same backdating as certificates
    next_update = max(ca.cert.not_valid_after_utc, now + timedelta(days=1))
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    seen: set[int] = set()
    for record in revoked:
        serial = int(record.serial, 16)
        if serial in seen:
            continue
        seen.add(serial)
        entry = x509.RevokedCertificateBuilder().serial_number(serial)
        entry = entry.revocation_date(min(datetime.fromisoformat(record.time), now))
        reason = _REASONS.get(record.reason)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca.key, _hash_for(ca.key))
    return crl.public_bytes(serialization.Encoding.PEM)
