"""What the soak checks at the end: jobs accounted for, files whole, memory bounded.

* :func:`account` compares the :class:`~bench.soak.ledger.Ledger` with the server's own
  list after a clean restart: every acknowledged job is there in a finished or queued
  state, unless the soak deleted it (a job deleted by an acknowledged call must be gone; one
  whose delete failed midway may be either).
* :func:`check_workspace` reads the stopped server's workspace: every row of ``jobs.db``
  has its ``job.zip`` with the size and SHA-256 the row records (and the zip reads back);
  every ``.json`` parses, every ``.jsonl`` line parses and ends with a newline, every
  ``.npz`` loads (no pickle); nothing is left in ``jobs/tmp/``, no ``*.tmp`` temp file
  anywhere, no job folder without its row; SQLite's ``integrity_check`` says ok.
* :class:`RssSampler` samples the server's ``VmRSS`` every few seconds, per incarnation
  (each start of the server process), and :func:`rss_summary` gives first, peak and last,
  and a least-squares slope per incarnation.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.soak.ledger import JobRecord

ACCEPTED_PREFIXES = ("FINISHED", "SUBMITTED")


# -- jobs ---------------------------------------------------------------------------------


@dataclass
class Accounting:
    acknowledged: int = 0
    by_origin: Counter[str] = field(default_factory=Counter)
    deleted: int = 0
    delete_unacknowledged: int = 0
    final_states: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # still RUNNING/DISPATCHED after the drain
    resurrected: list[str] = field(default_factory=list)  # deleted (acknowledged), still listed
    unacknowledged_present: int = 0  # on the server, though no submit/clone returned its id

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.resurrected)


def account(records: list[JobRecord], server_jobs: dict[str, str]) -> Accounting:
    """Every acknowledged job against ``server_jobs`` (job id -> status)."""
    result = Accounting(acknowledged=len(records))
    mine = set()
    for r in records:
        mine.add(r.job_id)
        result.by_origin[r.origin] += 1
        status = server_jobs.get(r.job_id)
        if r.deleted:
            result.deleted += 1
            if status is not None:
                result.resurrected.append(r.job_id)
            continue
        if r.delete_unacknowledged:
            result.delete_unacknowledged += 1
            if status is None:
                continue
        if status is None:
            result.lost.append(r.job_id)
            continue
        result.final_states[status] += 1
        if not status.startswith(ACCEPTED_PREFIXES):
            result.stuck.append(f"{r.job_id} {status}")
    result.unacknowledged_present = len(set(server_jobs) - mine)
    return result


# -- files --------------------------------------------------------------------------------


@dataclass
class Integrity:
    rows: int = 0
    archives_checked: int = 0
    json_files: int = 0
    jsonl_files: int = 0
    npz_files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_workspace(workspace: Path) -> Integrity:
    """Check a stopped server's workspace (see the module docstring)."""
    out = Integrity()
    jobs = workspace / "jobs"
    db = sqlite3.connect(f"file:{jobs / 'jobs.db'}?mode=ro", uri=True)
    try:
        verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            out.problems.append(f"jobs.db integrity_check: {verdict}")
        rows = db.execute("SELECT job_id, archive_size, meta FROM jobs").fetchall()
    finally:
        db.close()
    out.rows = len(rows)
    known = set()
    for job_id, size, meta_text in rows:
        known.add(job_id)
        try:
            meta = json.loads(meta_text)
        except ValueError as exc:
            out.problems.append(f"{job_id}: its meta in jobs.db is not JSON ({exc})")
            continue
        _check_archive(jobs / job_id / "job.zip", int(size), meta.get("archive_sha256"), out)
    for path in jobs.iterdir():
        if path.is_dir() and path.name not in known and path.name != "tmp":
            out.problems.append(f"job folder without a row: {path.name}")
    tmp = jobs / "tmp"
    if tmp.is_dir() and any(tmp.iterdir()):
        left = sorted(p.name for p in tmp.iterdir())
        out.problems.append(f"jobs/tmp/ not empty: {left[:5]}")
    for path in sorted(workspace.rglob("*")):
        if path.is_file():
            _check_file(path, workspace, out)
    return out


def _check_archive(path: Path, size: int, sha256: Any, out: Integrity) -> None:
    if not path.is_file():
        out.problems.append(f"{path.parent.name}: job.zip missing")
        return
    out.archives_checked += 1
    if path.stat().st_size != size:
        out.problems.append(f"{path.parent.name}: job.zip is {path.stat().st_size} B, row {size}")
    if sha256 is None:
        out.problems.append(f"{path.parent.name}: no archive_sha256 in the row's meta")
    elif _sha256(path) != sha256:
        out.problems.append(f"{path.parent.name}: job.zip SHA-256 differs from the row's")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            out.problems.append(f"{path.parent.name}: job.zip entry {bad} is corrupt")
    except zipfile.BadZipFile as exc:
        out.problems.append(f"{path.parent.name}: job.zip does not read ({exc})")


def _check_file(path: Path, root: Path, out: Integrity) -> None:
    rel = path.relative_to(root)
    name = path.name
    if name.endswith(".tmp") or ".tmp." in name or name.startswith(".tmp"):
        out.problems.append(f"temp file left: {rel}")
        return
    try:
        if name.endswith(".jsonl"):
            out.jsonl_files += 1
            text = path.read_text()
            if text and not text.endswith("\n"):
                out.problems.append(f"{rel}: last line has no newline (half-written)")
                return
            for line in text.splitlines():
                json.loads(line)
        elif name.endswith(".json"):
            out.json_files += 1
            json.loads(path.read_text())
        elif name.endswith(".npz"):
            out.npz_files += 1
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    z[key]
    except Exception as exc:
        out.problems.append(f"{rel}: does not read ({type(exc).__name__}: {exc})")


# -- logs ---------------------------------------------------------------------------------

_LEVEL = re.compile(r"\b(ERROR|CRITICAL|WARNING)\b")
_NOISE = re.compile(r"^\S+ \S+ |[0-9a-f]{8}-[0-9a-f-]{27}|\b\d+(\.\d+)?\b")


@dataclass
class LogScan:
    tracebacks: Counter[str] = field(default_factory=Counter)  # file -> count
    errors: Counter[str] = field(default_factory=Counter)  # "file: message shape" -> count
    warnings: Counter[str] = field(default_factory=Counter)


def scan_logs(log_dir: Path) -> LogScan:
    """ERROR/CRITICAL and WARNING lines (grouped by shape: timestamps, ids, numbers
    blanked) and tracebacks in the processes' console logs."""
    out = LogScan()
    for path in sorted(log_dir.glob("*.console.log")):
        who = path.name.removesuffix(".console.log")
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                out.tracebacks[who] += 1
            elif level := _LEVEL.search(line):
                shape = f"{who}: " + _NOISE.sub("#", line)[:160]
                if level.group(1) == "WARNING":
                    out.warnings[shape] += 1
                else:
                    out.errors[shape] += 1
    return out


# -- memory -------------------------------------------------------------------------------


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples ``(seconds since start, incarnation, VmRSS KiB)`` of the server process."""

    def __init__(self, server: Any, started: float, every: float = 2.0) -> None:
        super().__init__(name="rss", daemon=True)
        self.server = server
        self.started = started
        self.every = every
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            pid = self.server.pid
            if pid is None:
                continue
            kib = vm_rss_kib(pid)
            if kib is not None:
                self.samples.append((time.monotonic() - self.started, self.server.starts, kib))


@dataclass
class Incarnation:
    number: int
    start: float
    seconds: float
    first_mib: float
    peak_mib: float
    last_mib: float
    slope_mib_per_min: float | None  # least squares over the samples after the warm-up


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 5:
        return None
    t = np.array([p[0] for p in points]) / 60.0
    y = np.array([p[1] for p in points])
    if float(np.ptp(t)) == 0.0:
        return None
    return float(np.polyfit(t, y, 1)[0])


def rss_summary(samples: list[tuple[float, int, int]], warmup: float) -> list[Incarnation]:
    """Per incarnation: first, peak, last (MiB) and the slope after ``warmup`` seconds."""
    by: dict[int, list[tuple[float, float]]] = {}
    for t, n, kib in samples:
        by.setdefault(n, []).append((t, kib / 1024))
    out = []
    for n, points in sorted(by.items()):
        t0 = points[0][0]
        steady = [p for p in points if p[0] - t0 >= warmup]
        out.append(
            Incarnation(
                number=n,
                start=t0,
                seconds=points[-1][0] - t0,
                first_mib=points[0][1],
                peak_mib=max(p[1] for p in points),
                last_mib=points[-1][1],
                slope_mib_per_min=_slope(steady),
            )
        )
    return out
