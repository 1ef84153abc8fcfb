"""The provisioning state folder: the CA, every issued certificate and key, revocations.

Layout of ``<workspace>/<project>/state/`` (0700)::

    state.json      who holds which certificate, revocations, the last CRL number
                    (replaced atomically)
    revocations.crl the newest signed revocation list (an X.509 CRL, PEM; replaced
                    atomically after state.json; see provisioning.crl)
    ca.key          the root CA key, 0600, PKCS#8 (encrypted when a passphrase is used)
    ca.crt          the root CA certificate
    issued/         0700: one bundle per run that issued something, 0600, written once:
                    <UTC time>-<random>.json = {"format": 1, "certificates":
                        {"<serial hex>": {"name": ..., "cert": PEM, "key": PEM}}}
    .lock           serialises concurrent runs (flock)

One bundle per run rather than two files per participant: creating files dominates a
large run (see docs/provisioning.md), and a bundle is written once and never replaced,
so an interrupted run leaves at most an unreferenced bundle. Only ``state.json``
changes, by atomic rename. Keys in bundles are encrypted with the CA passphrase when
one is used. Serial numbers are lower-case hex without a prefix, as in ``revoked.json``.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flare_protocol.errors import ProvisionError
from provisioning._fs import FileBatch, fsync_dir, write_atomic
from provisioning.certs import CertificateAuthority, PrivateKey, key_pem

__all__ = ["IssuedRecord", "RevokedRecord", "State", "StateLock", "load_ca", "serial_hex"]

STATE_FORMAT = 1
STATE_JSON = "state.json"
CA_KEY = "ca.key"
CA_CERT = "ca.crt"
ISSUED = "issued"


def serial_hex(serial: int) -> str:
    """A serial number as ``revoked.json`` and the state write it."""
    return format(serial, "x")


@dataclass(frozen=True)
class IssuedRecord:
    """The certificate a participant currently holds."""

    name: str
    type: str
    org: str
    role: str | None
    host_names: list[str]
    serial: str
    key_type: str
    not_before: str
    not_after: str
    #: The file under ``issued/`` that holds this certificate and its key.
    bundle: str


@dataclass(frozen=True)
class RevokedRecord:
    """A certificate that must no longer be accepted."""

    serial: str
    name: str
    reason: str  # removed | superseded | revoked | expired
    time: str


class StateLock:
    """An exclusive lock on a state folder for one provisioning run."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise ProvisionError(
                f"{self.path.parent}: another flare provision run holds this project; "
                "wait for it to finish",
                path=str(self.path.parent),
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _load_key(path: Path, passphrase: bytes | None, data: bytes | None = None) -> PrivateKey:
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ProvisionError(f"{path}: cannot read: {exc.strerror}", path=str(path)) from None
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise ProvisionError(
            f"{path}: the key is encrypted; give the passphrase with --ca-passphrase-env VAR",
            path=str(path),
        )
    if not encrypted and passphrase:
        raise ProvisionError(
            f"{path}: this state was created without a passphrase; run without --ca-passphrase-env",
            path=str(path),
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (ValueError, TypeError):
        raise ProvisionError(
            f"{path}: cannot load the key (wrong passphrase or damaged file)", path=str(path)
        ) from None
    return key  # type: ignore[return-value]


def load_ca(state_dir: str | Path, passphrase: bytes | None = None) -> CertificateAuthority:
    """The project CA from a state folder (for re-provisioning and test tooling)."""
    state_dir = Path(state_dir)
    key = _load_key(state_dir / CA_KEY, passphrase)
    try:
        cert = x509.load_pem_x509_certificate((state_dir / CA_CERT).read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(
            f"{state_dir / CA_CERT}: cannot load the CA certificate: {exc}",
            path=str(state_dir / CA_CERT),
        ) from None
    return CertificateAuthority(key=key, cert=cert)


class State:
    """An open state folder. Changes are written by :meth:`save` (call it last)."""

    def __init__(
        self,
        state_dir: Path,
        ca: CertificateAuthority,
        passphrase: bytes | None,
        doc: dict[str, Any],
    ) -> None:
        self.dir = state_dir
        self.ca = ca
        self.passphrase = passphrase
        self.project: str = doc["project"]
        self.participants: dict[str, IssuedRecord] = {
            name: IssuedRecord(**rec) for name, rec in doc.get("participants", {}).items()
        }
        self.revoked: list[RevokedRecord] = [RevokedRecord(**r) for r in doc.get("revoked", [])]
        self.prods: list[str] = list(doc.get("prods", []))
        #: The number of the last CRL written (0: none yet, a state of an earlier release).
        self.crl_number: int = int(doc.get("crl_number", 0))
        self._pending: dict[str, dict[str, str]] = {}
        self._bundles: dict[str, dict[str, dict[str, str]]] = {}

    @staticmethod
    def exists(state_dir: Path) -> bool:
        return (state_dir / STATE_JSON).is_file()

    @classmethod
    def create(
        cls,
        state_dir: Path,
        project: str,
        ca: CertificateAuthority,
        passphrase: bytes | None,
        batch: FileBatch,
    ) -> State:
        """A new state for ``project``: writes the CA files (state.json comes with save)."""
        for name in (CA_KEY, CA_CERT, ISSUED):
            if (state_dir / name).exists():
                raise ProvisionError(
                    f"{state_dir}: holds {name} but no {STATE_JSON}; the folder is incomplete. "
                    "Restore state.json from a backup, or move the folder away to start over",
                    path=str(state_dir),
                )
        batch.write(state_dir / CA_KEY, key_pem(ca.key, passphrase), 0o600)
        batch.write(state_dir / CA_CERT, ca.cert_pem, 0o644)
        batch.mkdir(state_dir / ISSUED, 0o700)
        return cls(state_dir, ca, passphrase, {"project": project})

    @staticmethod
    def discard_new(state_dir: Path) -> None:
        """Remove what :meth:`create` wrote, after a first run failed before saving."""
        for name in (CA_KEY, CA_CERT):
            (state_dir / name).unlink(missing_ok=True)
        shutil.rmtree(state_dir / ISSUED, ignore_errors=True)

    @classmethod
    def open(cls, state_dir: Path, project: str, passphrase: bytes | None) -> State:
        """Load an existing state folder."""
        path = state_dir / STATE_JSON
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProvisionError(
                f"{path}: cannot read the provisioning state: {exc}", path=str(path)
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ProvisionError(f"{path}: unknown state format", path=str(path))
        if doc.get("project") != project:
            raise ProvisionError(
                f"{path}: belongs to project {doc.get('project')!r}, not {project!r}",
                path=str(path),
            )
        try:
            return cls(state_dir, load_ca(state_dir, passphrase), passphrase, doc)
        except (TypeError, KeyError) as exc:
            raise ProvisionError(f"{path}: malformed state ({exc})", path=str(path)) from None

    def new_bundle_name(self, when: datetime) -> str:
        """The file name this run's newly issued certificates go to."""
        return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}.json"

    def store_leaf(self, record: IssuedRecord, key: PrivateKey, cert: x509.Certificate) -> bytes:
        """Keep a newly issued key and certificate (written by :meth:`write_bundle`).

        Returns the key's plain PEM for the kit.
        """
        plain = key_pem(key)
        stored = key_pem(key, self.passphrase) if self.passphrase else plain
        self._pending[record.serial] = {
            "name": record.name,
            "cert": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "key": stored.decode("ascii"),
        }
        self.participants[record.name] = record
        return plain

    def write_bundle(self, batch: FileBatch, name: str) -> None:
        """Write the certificates and keys issued in this run to ``issued/<name>`` (0600)."""
        if not self._pending:
            return
        doc = {"format": STATE_FORMAT, "certificates": self._pending}
        # Compact JSON: the C encoder is far faster than indented output for large runs.
        batch.write(self.dir / ISSUED / name, json.dumps(doc).encode(), 0o600)
        self._bundles[name] = self._pending
        self._pending = {}

    def _entry(self, record: IssuedRecord) -> dict[str, str]:
        bundle = self._bundles.get(record.bundle)
        path = self.dir / ISSUED / record.bundle
        if bundle is None:
            try:
                bundle = json.loads(path.read_text(encoding="utf-8"))["certificates"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ProvisionError(
                    f"{path}: cannot read issued certificates: {exc}", path=str(path)
                ) from None
            self._bundles[record.bundle] = bundle
        try:
            return bundle[record.serial]
        except KeyError:
            raise ProvisionError(
                f"{path}: has no certificate {record.serial} for {record.name}", path=str(path)
            ) from None

    def key_pem(self, record: IssuedRecord) -> bytes:
        """The plain PEM of a participant's stored key (decrypted when needed)."""
        data = self._entry(record)["key"].encode("ascii")
        if not self.passphrase:
            return data
        return key_pem(_load_key(self.dir / ISSUED / record.bundle, self.passphrase, data))

    def cert_pem(self, record: IssuedRecord) -> bytes:
        """The PEM of a participant's current certificate."""
        return self._entry(record)["cert"].encode("ascii")

    def revoke(self, record: IssuedRecord, reason: str, when: datetime) -> None:
        self.revoked.append(
            RevokedRecord(
                serial=record.serial, name=record.name, reason=reason, time=when.isoformat()
            )
        )

    def revoked_serials(self) -> list[str]:
        return [r.serial for r in self.revoked]

    def save(self) -> None:
        """Write state.json atomically (temp, fsync, rename, fsync folder)."""
        doc: dict[str, Any] = {
            "format": STATE_FORMAT,
            "project": self.project,
            "ca": {
                "subject": self.ca.cert.subject.rfc4514_string(),
                "serial": serial_hex(self.ca.cert.serial_number),
                "encrypted": bool(self.passphrase),
            },
            "revoked": [asdict(r) for r in self.revoked],
            "prods": self.prods,
            "crl_number": self.crl_number,
        }
        # One participant per line: readable, and still the fast C encoder per entry.
        body = json.dumps(doc)[:-1]
        rows = ",\n  ".join(
            f"{json.dumps(n)}: {json.dumps(asdict(r))}"
            for n, r in sorted(self.participants.items())
        )
        text = f'{body}, "participants": {{\n  {rows}\n}}}}\n'
        write_atomic(self.dir / STATE_JSON, text.encode(), 0o600)
        fsync_dir(self.dir)
