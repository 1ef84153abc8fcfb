"""The revocation list in force: a CRL signed by the project root, never replaced by an older one.

Theory of operation. Provisioning signs an X.509 CRL with an increasing CRL number on
every run (:mod:`provisioning.crl`). The server accepts a list only when the project root
signed it (issuer and signature) and, at run time, when its number is greater than the
number in force; the list accepted last is kept in ``<workspace>/revocations.crl``
(written atomically before it takes effect), so a restart starts from it even when the
kit it starts from carries an older list. At start-up the list in force is the newer of
the workspace's and the kit's ``startup/revocations.crl``; the serials of a kit's
``startup/revoked.json`` (kits of earlier releases) are always added, never removed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flare_protocol._direct_io import replace_file
from flare_protocol.errors import KitError, RevocationListRejected
from flare_protocol.kit import REVOCATIONS, REVOKED, Kit
from flare_server.identity_check import load_revoked

__all__ = ["RevocationList", "RevocationUpdate", "Revocations", "parse_crl"]

log = logging.getLogger("flare_server.revocations")

#: The accepted list's copy in the server workspace.
WORKSPACE_CRL = "revocations.crl"


@dataclass(frozen=True)
class RevocationList:
    """A verified CRL: its revoked serials, its number, where it came from."""

    serials: frozenset[int]
    number: int
    source: str
    last_update: datetime | None = None
    #: The CRL as PEM (what the workspace keeps); empty for no list.
    pem: bytes = b""


@dataclass(frozen=True)
class RevocationUpdate:
    """The outcome of accepting a newer revocation list."""

    #: Serials refused now (the list plus any of the kit's ``revoked.json``).
    revoked: int
    crl_number: int
    #: The number of the list it replaced (0: none).
    previous: int
    #: Open streams and site connections of revoked certificates that were ended.
    streams_dropped: int


EMPTY = RevocationList(frozenset(), 0, "no revocation list")


def parse_crl(data: bytes, root: x509.Certificate, source: str) -> RevocationList:
    """A CRL (PEM or DER) checked against the project root.

    Raises:
        RevocationListRejected: not a CRL, not signed by the project CA, or without a CRL
            number (``reason`` says which).
    """
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_crl(data)
        )
    except ValueError as exc:
        raise RevocationListRejected(
            f"{source} is not an X.509 CRL ({exc}); give the revocations.crl that "
            "flare provision wrote (state/revocations.crl or the server kit's startup/)",
            reason="malformed",
        ) from None
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        raise RevocationListRejected(
            f"{source} has no CRL number, so it cannot be ordered against the list in force; "
            "give the revocations.crl that flare provision wrote",
            reason="malformed",
        ) from None
    public_key = root.public_key()
    signed = crl.issuer == root.subject and crl.is_signature_valid(public_key)  # type: ignore[arg-type]
    if not signed:
        raise RevocationListRejected(
            f"{source} (CRL number {number}) is not signed by the project CA "
            f"({root.subject.rfc4514_string()}); take the list from this project's "
            "provisioning state",
            reason="not_signed_by_project_ca",
            crl_number=number,
        )
    return RevocationList(
        serials=frozenset(r.serial_number for r in crl),
        number=number,
        source=source,
        last_update=crl.last_update_utc,
        pem=crl.public_bytes(serialization.Encoding.PEM),
    )


class Revocations:
    """The list in force, loaded from the kit and the workspace; replaced only by newer ones."""

    def __init__(self, kit: Kit, workspace: Path, root: x509.Certificate) -> None:
        self.root = root
        self.kit = kit
        self.path = workspace / WORKSPACE_CRL
        #: Serials of the kit's ``revoked.json`` (added to every list).
        self.legacy: frozenset[int] = load_revoked(kit.startup / REVOKED)
        self.current: RevocationList = self._initial()
        #: Orders check-then-write: an update and a SIGHUP reload never interleave.
        self._lock = threading.Lock()

    @property
    def serials(self) -> frozenset[int]:
        """Every serial refused now: the list in force plus the kit's ``revoked.json``."""
        return self.current.serials | self.legacy

    def _initial(self) -> RevocationList:
        """The newer of the workspace's list and the kit's; KitError if one is bad."""
        found = [EMPTY]
        for path in (self.path, self.kit.startup / REVOCATIONS):
            if not path.exists():
                continue
            try:
                found.append(parse_crl(path.read_bytes(), self.root, str(path)))
            except (OSError, RevocationListRejected) as exc:
                raise KitError(
                    f"{path}: cannot use this revocation list ({exc}); the server refuses to "
                    "start rather than accept certificates it may have revoked. Restore the "
                    "file from the provisioning state (state/revocations.crl)",
                    path=str(path),
                ) from None
        return max(found, key=lambda crl: crl.number)

    def check_newer(self, crl: RevocationList) -> None:
        """Raise RevocationListRejected unless ``crl`` is newer than the list in force."""
        if crl.number <= self.current.number:
            raise RevocationListRejected(
                f"CRL number {crl.number} is not newer than {self.current.number} in force "
                f"(from {self.current.source}); provision again to get a newer list",
                reason="not_newer",
                crl_number=crl.number,
                in_force=self.current.number,
            )

    def accept(self, crl: RevocationList) -> int:
        """Keep ``crl`` in the workspace (atomic, durable), then make it the list in force;
        the number of the list it replaced. Blocks on the disk: call it from a thread.

        Raises:
            RevocationListRejected: ``crl`` is not newer than the list in force.
            OSError: the workspace copy cannot be written (nothing changed).
        """
        with self._lock:
            self.check_newer(crl)
            replace_file(self.path, crl.pem, mode=0o644, sync_folder=True)
            previous, self.current = self.current.number, crl
            return previous

    def reload_kit(self) -> RevocationList | None:
        """Take the kit's ``startup/`` lists again (SIGHUP): a newer CRL is accepted and
        persisted, an older or equal one ignored; ``revoked.json`` is re-read. The newly
        accepted CRL, if any.

        Raises:
            KitError: ``revoked.json`` is unreadable (nothing changed).
            RevocationListRejected: the kit's CRL is not the project CA's (nothing changed).
        """
        legacy = load_revoked(self.kit.startup / REVOKED)
        path = self.kit.startup / REVOCATIONS
        accepted: RevocationList | None = None
        if path.exists():
            crl = parse_crl(path.read_bytes(), self.root, str(path))
            if crl.number > self.current.number:
                try:
                    self.accept(crl)
                    accepted = crl
                except RevocationListRejected:
                    pass  # a newer list arrived meanwhile
        self.legacy = self.legacy | legacy
        return accepted
