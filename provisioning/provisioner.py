"""One provisioning run: project.yml in, a new signed ``prod_NN`` out.

Theory of operation. A run takes the state folder's lock, then decides for each
participant of project.yml whether its current certificate can be reused (same type,
org, role and, for the server, host names; still valid; not asked to be revoked) or a
new key and certificate must be issued. A superseded certificate, and the certificate
of a participant no longer in project.yml, are recorded as revoked; every run signs a
revocation list with the next CRL number (:mod:`provisioning.crl`), kept as
``state/revocations.crl`` and put in the server kit next to ``revoked.json`` (the same
serials, for servers of earlier releases). New keys and certificates go into the
state folder under their serial, all kits are written into a temporary folder inside
the project folder, everything is flushed once, then ``state.json`` and the new
``prod_NN`` are renamed into place (state first: a crash in between only means the
next run writes the kits again with the same certificates).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flare_protocol.errors import ProjectFileError, ProvisionError
from flare_protocol.signature import ca_fingerprint
from provisioning._fs import FileBatch, fsync_dir, write_atomic
from provisioning.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_CERT_DAYS,
    KEY_TYPES,
    PrivateKey,
    create_ca,
    generate_key,
    issue_leaf,
    key_type_of,
)
from provisioning.crl import CRL_FILE, build_crl
from provisioning.kits import kit_files, write_kit
from provisioning.project import Participant, Project, load_project
from provisioning.state import IssuedRecord, State, StateLock, serial_hex

__all__ = ["ProvisionResult", "provision"]

STATE_DIR = "state"
_PROD_RE = re.compile(r"^prod_(\d+)$")
_TMP_PREFIX = ".tmp-prod-"


@dataclass(frozen=True)
class ProvisionResult:
    """What a provisioning run produced."""

    project: str
    #: The new ``<workspace>/<project>/prod_NN`` folder.
    prod_dir: Path
    #: participant name -> its kit folder in ``prod_dir``.
    kits: dict[str, Path]
    #: Root CA SHA-256 fingerprint, ``AB:CD:...`` (what ``flare kit verify`` accepts).
    ca_fingerprint: str
    #: Participants that got a new certificate in this run.
    issued: list[str]
    #: Participants whose existing certificate (same serial) was reused.
    reused: list[str]
    #: Participants whose certificate was revoked in this run (removed, or ``revoke=``).
    revoked: list[str]
    #: ``<workspace>/<project>/state``: the CA key and every issued certificate.
    state_dir: Path = field(default=Path())
    #: Serial numbers (hex) in the server kit's ``revoked.json``.
    revoked_serials: list[str] = field(default_factory=list)
    #: The CRL this run signed: ``state/revocations.crl`` (also in the server kit).
    crl_path: Path | None = None
    #: Its CRL number (one more than the previous run's).
    crl_number: int = 0
    #: Notices about ignored input (e.g. NVIDIA FLARE's ``builders`` section).
    notices: list[str] = field(default_factory=list)


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("'now' must be timezone-aware")
    return now.astimezone(timezone.utc)


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise ProvisionError(f"{path}: exists and is not a folder", path=str(path)) from None
    except OSError as exc:
        raise ProvisionError(
            f"{path}: cannot create the folder: {exc.strerror}; choose a writable workspace "
            "with -w DIR",
            path=str(path),
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ProvisionError(
            f"{path}: is not writable; choose a writable workspace with -w DIR", path=str(path)
        )


def _record(p: Participant, cert: x509.Certificate, key_type: str, bundle: str) -> IssuedRecord:
    return IssuedRecord(
        name=p.name,
        type=p.type.value,
        org=p.org,
        role=p.role.value if p.role else None,
        host_names=list(p.host_names),
        serial=serial_hex(cert.serial_number),
        key_type=key_type,
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        bundle=bundle,
    )


def _unchanged(rec: IssuedRecord, p: Participant) -> bool:
    return (
        rec.type == p.type.value
        and rec.org == p.org
        and rec.role == (p.role.value if p.role else None)
        and list(rec.host_names) == list(p.host_names)
    )


def _generate_keys(key_type: str, count: int) -> list[PrivateKey]:
    """``count`` new keys; RSA generation runs on every core (it releases the GIL)."""
    if not key_type.startswith("rsa") or count < 8:
        return [generate_key(key_type) for _ in range(count)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda _: generate_key(key_type), range(count)))


def _next_prod(project_dir: Path) -> str:
    numbers = [int(m.group(1)) for e in project_dir.iterdir() if (m := _PROD_RE.match(e.name))]
    return f"prod_{(max(numbers) + 1) if numbers else 0:02d}"


def provision(
    project_file: str | Path,
    workspace: str | Path,
    *,
    key_type: str = "ec-p256",
    ca_days: int = DEFAULT_CA_DAYS,
    cert_days: int = DEFAULT_CERT_DAYS,
    ca_passphrase: bytes | None = None,
    now: datetime | None = None,
    revoke: Iterable[str] = (),
    flush: str = "syncfs",
) -> ProvisionResult:
    """Create or extend a project: CA (first run), certificates, signed kits in a new prod_NN.

    Args:
        project_file: the project.yml (NVIDIA FLARE's format).
        workspace: the folder that holds ``<project>/state`` and ``<project>/prod_NN``.
        key_type: one of ``ec-p256`` (default), ``ec-p384``, ``rsa-2048``, ``rsa-3072``; used
            for the CA on the first run and for every newly issued key.
        ca_days, cert_days: validity of the CA (first run) and of new leaf certificates.
        ca_passphrase: encrypts the CA key and the participant keys kept in ``state/``.
        now: the time to issue at (tests); timezone-aware.
        revoke: participants whose current certificate is revoked and replaced by a new
            key and certificate although project.yml did not change (a lost or leaked kit).
        flush: how the new files are made durable before the rename (see ``provisioning._fs``).

    Raises:
        ProjectFileError: project.yml is missing or invalid.
        ProvisionError: the workspace or state cannot be used.
    """
    if key_type not in KEY_TYPES:
        raise ProvisionError(f"unknown key type {key_type!r} (use one of {', '.join(KEY_TYPES)})")
    for label, days in (("ca_days", ca_days), ("cert_days", cert_days)):
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ProvisionError(f"{label} must be a positive number of days, got {days!r}")
    when = _now(now)
    project = load_project(project_file)
    to_revoke = set(revoke)
    unknown = sorted(to_revoke - {p.name for p in project.participants})
    if unknown:
        raise ProjectFileError(
            f"{project.source}: cannot revoke {', '.join(map(repr, unknown))}: not a participant",
            path=str(project.source),
        )
    workspace = Path(workspace)
    project_dir = workspace / project.name
    state_dir = project_dir / STATE_DIR
    _make_dir(project_dir)
    _make_dir(state_dir)
    try:
        with StateLock(state_dir):
            first_run = not State.exists(state_dir)
            try:
                return _provision_locked(
                    project,
                    project_dir,
                    state_dir,
                    key_type=key_type,
                    ca_days=ca_days,
                    cert_days=cert_days,
                    passphrase=ca_passphrase or None,
                    when=when,
                    to_revoke=to_revoke,
                    flush=flush,
                )
            except BaseException:
                if first_run and not State.exists(state_dir):
                    State.discard_new(state_dir)  # a failed first run leaves no CA behind
                raise
    except OSError as exc:
        where = exc.filename or project_dir
        raise ProvisionError(f"{where}: {exc.strerror or exc}", path=str(where)) from None


def _provision_locked(
    project: Project,
    project_dir: Path,
    state_dir: Path,
    *,
    key_type: str,
    ca_days: int,
    cert_days: int,
    passphrase: bytes | None,
    when: datetime,
    to_revoke: set[str],
    flush: str,
) -> ProvisionResult:
    for stale in project_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)  # a crashed run's half-written kits

    batch = FileBatch(flush)
    if State.exists(state_dir):
        state = State.open(state_dir, project.name, passphrase)
    else:
        ca = create_ca(project.name, key_type=key_type, days=ca_days, now=when)
        state = State.create(state_dir, project.name, ca, passphrase, batch)
    ca = state.ca
    ca_pem = ca.cert_pem
    fingerprint = ca_fingerprint(ca_pem)

    issued: list[str] = []
    reused: list[str] = []
    revoked: list[str] = []
    names = {p.name for p in project.participants}
    for name in sorted(set(state.participants) - names):
        state.revoke(state.participants.pop(name), "removed", when)
        revoked.append(name)

    keys: dict[str, bytes] = {}
    certs: dict[str, bytes] = {}
    bundle = state.new_bundle_name(when)
    to_issue: list[Participant] = []
    for p in project.participants:
        rec = state.participants.get(p.name)
        if rec is not None:
            if p.name in to_revoke:
                state.revoke(rec, "revoked", when)
                revoked.append(p.name)
            elif not _unchanged(rec, p):
                state.revoke(rec, "superseded", when)
            elif datetime.fromisoformat(rec.not_after) <= when:
                state.revoke(rec, "expired", when)
            else:
                keys[p.name] = state.key_pem(rec)
                certs[p.name] = state.cert_pem(rec)
                reused.append(p.name)
                continue
        to_issue.append(p)

    new_keys = _generate_keys(key_type, len(to_issue))
    for p, key in zip(to_issue, new_keys, strict=True):
        issued.append(p.name)
        cert = issue_leaf(
            ca,
            key.public_key(),
            name=p.name,
            org=p.org,
            participant_type=p.type,
            role=p.role,
            host_names=p.host_names,
            days=cert_days,
            now=when,
        )
        keys[p.name] = state.store_leaf(_record(p, cert, key_type_of(key), bundle), key, cert)
        certs[p.name] = cert.public_bytes(serialization.Encoding.PEM)

    state.write_bundle(batch, bundle)
    revoked_serials = state.revoked_serials()
    state.crl_number += 1
    crl_pem = build_crl(ca, state.revoked, number=state.crl_number, now=when)
    prod_name = _next_prod(project_dir)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=project_dir))
    try:
        kits: dict[str, Path] = {}
        for p in project.participants:
            startup, local = kit_files(
                project,
                p,
                ca_pem=ca_pem,
                cert_pem=certs[p.name],
                key_pem=keys[p.name],
                fingerprint=fingerprint,
                revoked_serials=revoked_serials,
                crl_pem=crl_pem,
            )
            write_kit(batch, tmp / p.name, p, startup, local, ca.key)
            kits[p.name] = project_dir / prod_name / p.name
        final = project_dir / prod_name
        if final.exists():  # only if someone made it by hand meanwhile: we hold the lock
            raise ProvisionError(
                f"{final}: already exists; it is never overwritten", path=str(final)
            )
        batch.flush(project_dir)
        state.prods.append(prod_name)
        state.save()
        # After state.json: a crash in between leaves the previous CRL here and the next
        # run signs a higher number, so two different lists never share a number.
        write_atomic(state_dir / CRL_FILE, crl_pem, 0o644)
        os.rename(tmp, final)
        fsync_dir(project_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ProvisionResult(
        project=project.name,
        prod_dir=project_dir / prod_name,
        kits=kits,
        ca_fingerprint=fingerprint,
        issued=issued,
        reused=reused,
        revoked=revoked,
        state_dir=state_dir,
        revoked_serials=revoked_serials,
        crl_path=state_dir / CRL_FILE,
        crl_number=state.crl_number,
        notices=list(project.notices),
    )
