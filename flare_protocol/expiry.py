"""Certificates that expire soon: which, when, and the warning line that says so.

The server (its own certificate, the root CA, each connecting party's), sites (their own
and the root CA) and the admin shell (the admin's own and the server's) warn when a
certificate ends within :data:`EXPIRY_WARNING_DAYS`; ``get_system_info`` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["EXPIRY_WARNING_DAYS", "Expiry", "expiring", "expiry_of"]

#: A certificate that ends within this many days is reported.
EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Expiry:
    """When one certificate ends."""

    #: ``server certificate``, ``root CA``, ``site certificate``, ``admin certificate``.
    what: str
    #: The certificate's common name.
    name: str
    serial: int
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> float:
        moment = now or datetime.now(timezone.utc)
        return (self.not_after - moment).total_seconds() / 86400

    def describe(self, now: datetime | None = None) -> str:
        """``server certificate localhost (serial 1a2b) expires 2027-01-01 12:00 UTC (in 9
        days)``; an ended one says ``expired``."""
        left = self.days_left(now)
        when = self.not_after.strftime("%Y-%m-%d %H:%M UTC")
        span = f"in {left:.0f} day(s)" if left >= 1 else "in less than a day"
        verb = f"expires {when} ({span})" if left > 0 else f"expired {when}"
        return f"{self.what} {self.name} (serial {self.serial:x}) {verb}"


def expiry_of(what: str, cert: x509.Certificate) -> Expiry:
    """The :class:`Expiry` of ``cert``, labelled ``what``."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return Expiry(what, name, cert.serial_number, cert.not_valid_after_utc)


def expiring(
    items: Iterable[Expiry],
    *,
    within_days: float = EXPIRY_WARNING_DAYS,
    now: datetime | None = None,
) -> list[Expiry]:
    """The items that end within ``within_days`` of ``now`` (ended ones included), soonest first."""
    limit = (now or datetime.now(timezone.utc)) + timedelta(days=within_days)
    return sorted((e for e in items if e.not_after <= limit), key=lambda e: e.not_after)
