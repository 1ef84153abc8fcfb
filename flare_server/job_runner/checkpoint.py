"""A running job's resume point: what a restarted server needs to go on after a crash.

Theory of operation. Once a job's sites have deployed it, and again after every round is
aggregated, the run saves a :class:`Checkpoint` in the job folder::

    checkpoint/state.json             the last completed round and what resuming needs
    checkpoint/fedopt_m_NNN.npz       FedOpt's m and v after round NNN (FedOpt jobs only)
    checkpoint/fedopt_v_NNN.npz

The round's model is the result folder's ``models/round_NNN.npz`` (written by the rounds
phase); ``state.json`` names it and the optimizer files with their sha256. Each file is
written whole or not at all (:func:`~flare_protocol._direct_io.replace_file`: temp file,
fsync, rename, fsync of the folder), and ``state.json`` only after the files it names
are on disk, so the ``state.json`` that exists always names complete files of the same
round; optimizer files of earlier rounds are removed after it. The saves of one run are
chained (:class:`CheckpointWriter`): round N+1's state never lands before round N's.
:func:`load_checkpoint` checks everything (version, fields, hashes) and raises
a ``FlareError`` naming what is wrong; the server then ends the job
``FINISHED:ABNORMAL`` instead of resuming it. The folder goes when the run ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flare_protocol._direct_io import replace_file
from flare_protocol._fsync import fsync_dir
from flare_protocol.errors import FlareError, InvalidModel
from flare_protocol.models import MAX_MODEL_BYTES, Params, dump_params, load_params
from flare_server.results import MODELS, round_model_name

__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "Checkpoint",
    "CheckpointWriter",
    "LoadedCheckpoint",
    "load_checkpoint",
    "copy_optimizer",
    "remove_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
VERSION = 1
_OPTIMIZER = re.compile(r"^fedopt_[mv]_(\d{3,})\.npz$")


@dataclass(frozen=True)
class Checkpoint:
    """The resume point of a running job (``checkpoint/state.json``)."""

    job_id: str
    #: ``fedavg``, ``fedopt`` or ``driver`` (a driver job is never resumed server-side).
    workflow: str
    #: The sites running the job once it was deployed.
    sites: tuple[str, ...]
    #: The last aggregated round (0: none yet).
    round: int
    #: sha256 of ``result/models/round_NNN.npz`` (None for round 0).
    model_sha256: str | None = None
    #: sha256 of FedOpt's m and v files after ``round`` (None: not FedOpt, or round 0).
    optimizer_sha256: tuple[str, str] | None = None
    #: Sites lost so far: site -> why.
    lost: Mapping[str, str] = field(default_factory=dict)
    #: summary.json's ``rounds`` entries so far (one per aggregated round).
    rounds: tuple[Mapping[str, Any], ...] = ()
    #: Sites whose deployment failed (summary.json's ``deploy_failures``).
    deploy_failures: Mapping[str, str] = field(default_factory=dict)
    #: When the run started (unix time), and when this checkpoint was taken.
    started: float = 0.0
    saved: float = 0.0

    def to_json(self) -> bytes:
        data = asdict(self)
        data["version"] = VERSION
        return json.dumps(data, indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Checkpoint:
        """Parse ``state.json`` (FlareError naming ``where`` and the field)."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FlareError(f"{where} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise FlareError(f"{where} has version {version!r}; this server reads {VERSION}")
        try:
            optimizer = data.get("optimizer_sha256")
            checkpoint = cls(
                job_id=str(data["job_id"]),
                workflow=str(data["workflow"]),
                sites=tuple(str(s) for s in data["sites"]),
                round=int(data["round"]),
                model_sha256=None
                if data.get("model_sha256") is None
                else str(data["model_sha256"]),
                optimizer_sha256=None
                if optimizer is None
                else (str(optimizer[0]), str(optimizer[1])),
                lost={str(k): str(v) for k, v in dict(data.get("lost") or {}).items()},
                rounds=tuple(dict(r) for r in data.get("rounds") or ()),
                deploy_failures={
                    str(k): str(v) for k, v in dict(data.get("deploy_failures") or {}).items()
                },
                started=float(data.get("started") or 0.0),
                saved=float(data.get("saved") or 0.0),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FlareError(f"{where} is malformed: {type(exc).__name__}: {exc}") from None
        if checkpoint.round < 0 or (checkpoint.round > 0) != (checkpoint.model_sha256 is not None):
            raise FlareError(
                f"{where} is malformed: round {checkpoint.round} names model "
                f"{checkpoint.model_sha256}"
            )
        return checkpoint


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checked checkpoint with what resuming reads from disk."""

    checkpoint: Checkpoint
    #: The bytes of ``result/models/round_NNN.npz`` (None for round 0).
    model_npz: bytes | None = field(default=None, repr=False)
    #: FedOpt's (m, v) after the round.
    optimizer: tuple[Params, Params] | None = field(default=None, repr=False)


def _optimizer_files(folder: Path, number: int) -> tuple[Path, Path]:
    return folder / f"fedopt_m_{number:03d}.npz", folder / f"fedopt_v_{number:03d}.npz"


def save_checkpoint(
    job_dir: Path,
    result_dir: Path,
    checkpoint: Checkpoint,
    optimizer: tuple[Params, Params] | None = None,
) -> None:
    """Save ``checkpoint`` durably (blocking): FedOpt's (m, v) files when given (their
    sha256 go into ``state.json``), then ``state.json``.

    The round's model (``result/models/round_NNN.npz``) must already be written.
    """
    folder = job_dir / CHECKPOINT_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    if checkpoint.round > 0:
        fsync_dir(result_dir / MODELS)  # the model's rename must outlive a crash too
    files = _optimizer_files(folder, checkpoint.round)
    if optimizer is not None:
        m, v = dump_params(optimizer[0]), dump_params(optimizer[1])
        checkpoint = replace(checkpoint, optimizer_sha256=(_sha256(m), _sha256(v)))
        for path, data in zip(files, (m, v), strict=True):
            replace_file(path, data, sync_folder=True)
    keep = {path.name for path in files} if checkpoint.optimizer_sha256 is not None else set()
    replace_file(folder / STATE_FILE, checkpoint.to_json(), sync_folder=True)
    for old in folder.iterdir():
        if _OPTIMIZER.match(old.name) and old.name not in keep:
            old.unlink(missing_ok=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(job_dir: Path, result_dir: Path) -> LoadedCheckpoint:
    """The job's checkpoint with its model and optimizer state, all checked (blocking).

    Raises:
        FlareError: there is none, or it or a file it names is damaged.
    """
    folder = job_dir / CHECKPOINT_DIR
    state = folder / STATE_FILE
    try:
        raw = state.read_bytes()
    except FileNotFoundError:
        raise FlareError(f"no checkpoint was saved ({state} is missing)") from None
    except OSError as exc:
        raise FlareError(f"cannot read {state}: {exc}") from None
    checkpoint = Checkpoint.from_json(raw, str(state))
    if checkpoint.job_id != job_dir.name:
        raise FlareError(f"{state} belongs to job {checkpoint.job_id}, not {job_dir.name}")
    if checkpoint.round == 0:
        return LoadedCheckpoint(checkpoint)
    model_path = result_dir / MODELS / round_model_name(checkpoint.round)
    # The bytes the server wrote (same sha256); the resumed run reads their arrays.
    model = _read_checked(model_path, checkpoint.model_sha256)
    optimizer: tuple[Params, Params] | None = None
    if checkpoint.optimizer_sha256 is not None:
        m_path, v_path = _optimizer_files(folder, checkpoint.round)
        try:
            m = _read_checked(m_path, checkpoint.optimizer_sha256[0])
            v = _read_checked(v_path, checkpoint.optimizer_sha256[1])
            # float64 state of a model up to MAX_MODEL_BYTES: up to twice its size
            cap = max(MAX_MODEL_BYTES, len(m), len(v))
            optimizer = (load_params(m, max_bytes=cap), load_params(v, max_bytes=cap))
        except InvalidModel as exc:
            raise FlareError(f"FedOpt state of round {checkpoint.round}: {exc}") from None
    return LoadedCheckpoint(checkpoint, model, optimizer)


def _read_checked(path: Path, sha256: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlareError(f"cannot read {path}: {exc.strerror or exc}") from None
    if _sha256(data) != sha256:
        raise FlareError(f"{path} does not match its checkpoint (sha256 differs)")
    return data


def remove_checkpoint(job_dir: Path) -> None:
    """Remove the job's checkpoint (the job ended)."""
    shutil.rmtree(job_dir / CHECKPOINT_DIR, ignore_errors=True)


def copy_optimizer(state: tuple[Params, Params]) -> tuple[Params, Params]:
    """A copy of FedOpt's (m, v), which the next round changes in place (blocking)."""
    m, v = state
    return {k: a.copy() for k, a in m.items()}, {k: a.copy() for k, a in v.items()}


class CheckpointWriter:
    """Saves one run's checkpoints in order, each after the round model it names."""

    def __init__(self, job_id: str, job_dir: Path, result_dir: Path) -> None:
        self.job_id = job_id
        self.job_dir = job_dir
        self.result_dir = result_dir
        self._last: asyncio.Task[None] | None = None

    def save(
        self,
        checkpoint: Checkpoint,
        *,
        after: asyncio.Task[None] | None = None,
        optimizer: tuple[Params, Params] | None = None,
    ) -> asyncio.Task[None]:
        """Save ``checkpoint`` (with FedOpt's ``optimizer`` state, a copy nothing changes)
        once ``after`` (its round model's write) and the previous save are done; the task
        doing it (it never raises: a failure is logged, and a restart would resume from an
        earlier round)."""
        previous = self._last

        async def write() -> None:
            waited = [t for t in (after, previous) if t is not None]
            if waited:
                await asyncio.gather(*waited, return_exceptions=True)
            if after is not None and (after.cancelled() or after.exception() is not None):
                log.error(
                    "job %s: the model of round %d was not saved: no checkpoint for it",
                    self.job_id,
                    checkpoint.round,
                )
                return
            stamped = replace(checkpoint, saved=time.time())
            try:
                await asyncio.to_thread(
                    save_checkpoint, self.job_dir, self.result_dir, stamped, optimizer
                )
            except Exception as exc:
                log.error(
                    "job %s: the checkpoint of round %d was not saved (%s): a server "
                    "restart would resume from an earlier round",
                    self.job_id,
                    checkpoint.round,
                    exc,
                )

        self._last = asyncio.get_running_loop().create_task(write())
        return self._last
