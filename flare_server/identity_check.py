"""Who is calling: the verified peer certificate of a call turned into an Identity.

Theory of operation. The TLS handshake (grpc core) has already verified the client's
chain to the project root and its validity dates. What it does not check, we do here, on
every call: the leaf must be issued by the project root itself (grpc accepts a chain
through an intermediate CA although the root's path length is 0), be CA:FALSE, carry the
extended key usage and the participant type the endpoint serves (admin or site), and its
serial must not be revoked. The leaf comes from ``auth_context()["x509_pem_cert"]`` and is
parsed with ``cryptography``; subject strings are never split and request fields are never
consulted. The check is total: whatever is wrong with a certificate, the outcome is an
:class:`IdentityRejected` with a reason (logged with the peer address by the caller),
never another exception.

Parsing a certificate costs ~100 µs, so the outcome (an Identity or the rejection) is
cached by the certificate's bytes; a cached call costs a dictionary lookup plus the
revocation and expiry checks, which are re-done every time so that a revocation loaded
later takes effect on connections that are already open.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509

from flare_protocol.errors import IdentityRejected, KitError
from flare_protocol.expiry import expiring, expiry_of
from flare_protocol.identity import (
    Identity,
    ParticipantType,
    check_issued_by_root,
    identity_from_certificate,
)

log = logging.getLogger("flare_server.identity")

_CACHE_SIZE = 4096


def parse_serial(text: str) -> int:
    """A serial number written as hex (``"0a1b..."``, ``"0A:1B:..."`` or ``"0x0a1b"``)."""
    cleaned = text.strip().lower().replace(":", "")
    if cleaned.startswith("0x"):
        cleaned = cleaned[2:]
    return int(cleaned, 16)


def load_revoked(path: Path) -> frozenset[int]:
    """Revoked serials from a kit's ``startup/revoked.json`` (``{"serials": [hex, ...]}``).

    A missing file means nothing is revoked; an unreadable one stops start-up.
    """
    if not path.exists():
        return frozenset()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        serials = data["serials"]
        if not isinstance(serials, list):
            raise TypeError("'serials' must be a list")
        return frozenset(parse_serial(str(s)) for s in serials)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KitError(
            f"{path} is not a valid revocation list ({exc}); re-provision the server kit",
            path=str(path),
        ) from exc


class IdentityChecker:
    """Checks the peer certificate of a call against the project root and one endpoint's
    participant type."""

    def __init__(
        self, expected_type: ParticipantType, root: x509.Certificate, revoked: Iterable[int] = ()
    ) -> None:
        self.expected_type = expected_type
        self.root = root
        self._revoked = frozenset(revoked)
        self._cache: OrderedDict[bytes, tuple[Identity | None, str, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def revoked(self) -> frozenset[int]:
        return self._revoked

    def set_revoked(self, serials: Iterable[int]) -> None:
        """Replace the revoked serials; takes effect on the next call of every connection."""
        self._revoked = frozenset(serials)

    def check_auth_context(self, auth_context: Mapping[str, Iterable[bytes]]) -> Identity:
        """Identity from a gRPC auth context; raises IdentityRejected."""
        pems = list(auth_context.get("x509_pem_cert", ()))
        if len(pems) != 1:
            raise IdentityRejected("the connection carries no client certificate")
        return self.check_pem(pems[0])

    def check_pem(self, pem: bytes) -> Identity:
        """Identity from a PEM leaf certificate; raises IdentityRejected."""
        with self._lock:
            hit = self._cache.get(pem)
            if hit is not None:
                self._cache.move_to_end(pem)
        if hit is None:
            hit = self._parse(pem)
            with self._lock:
                self._cache[pem] = hit
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        identity, reason, not_after = hit
        if identity is None:
            raise IdentityRejected(reason)
        if identity.serial in self._revoked:
            raise IdentityRejected(
                f"certificate of {identity.name} (serial {identity.serial:x}) is revoked"
            )
        if time.time() > not_after:
            raise IdentityRejected(
                f"certificate of {identity.name} expired at {identity.not_after.isoformat()}"
            )
        return identity

    def _parse(self, pem: bytes) -> tuple[Identity | None, str, float]:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except Exception as exc:
            return None, f"unparseable client certificate: {exc}", 0.0
        try:
            identity = identity_from_certificate(cert, self.expected_type)
            check_issued_by_root(cert, self.root)
        except IdentityRejected as exc:
            return None, exc.message, 0.0
        except Exception as exc:  # identity_from_certificate is total; this is the backstop
            return None, f"malformed client certificate: {type(exc).__name__}: {exc}", 0.0
        # Once per certificate (the outcome is cached): a peer whose certificate ends soon.
        for soon in expiring([expiry_of(f"{self.expected_type.value} certificate", cert)]):
            log.warning("%s: ask the project admin for a new kit", soon.describe())
        return identity, "", identity.not_after.timestamp()
