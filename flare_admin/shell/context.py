"""What a running command can reach: the Session, the output, the user, small caches.

:class:`ShellContext` is handed to every command. It resolves job references (a full
id, any unique prefix of one, or ``last``), asks for confirmation, shows progress, and
keeps the connection state the toolbar shows. Job ids and site names for completion are
cached for a couple of seconds so that pressing Tab does not hammer the server.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_admin.results import CertificateExpiry, JobMeta
from flare_protocol import errors
from flare_protocol.job_status import is_job_id, is_job_id_prefix

if TYPE_CHECKING:
    from rich.console import Console

    from flare_admin.session import Session

__all__ = ["CACHE_SECONDS", "Connection", "JobRef", "ShellContext"]

#: How long completion reuses the job ids and site names it fetched.
CACHE_SECONDS = 2.0
#: How long a command waits for a lost server to come back before it runs anyway.
RECONNECT_SECONDS = 3.0
LAST_JOB = ("last", "latest")


class Connection(enum.Enum):
    """What the shell knows of its connection (shown in the toolbar)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class JobRef:
    """A job offered by completion: its id, name and status."""

    job_id: str
    name: str
    status: str


class _Cache:
    """A value fetched at most every ``ttl`` seconds (thread-safe: completion has a thread)."""

    def __init__(self, fetch: Callable[[], Any], ttl: float = CACHE_SECONDS) -> None:
        self._fetch, self._ttl = fetch, ttl
        self._value: Any = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at > self._ttl:
                self._value = self._fetch()
                self._at = time.monotonic()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._at = float("-inf")


class ShellContext:
    """The state commands share for one shell run."""

    def __init__(
        self,
        session: Session,
        console: Console,
        *,
        json_output: bool = False,
        assume_yes: bool = False,
        interactive: bool = False,
        ask: Callable[[str], str] | None = None,
    ) -> None:
        self.session = session
        self.console = console
        self.json_output = json_output
        self.assume_yes = assume_yes
        self.interactive = interactive
        self._ask = ask
        self.connection = Connection.CONNECTED
        self.last_error = ""
        self.running_jobs: tuple[str, ...] = ()
        self.sites_connected = 0
        #: Certificates the server says end within 30 days (from the last refresh).
        self.expiring: tuple[CertificateExpiry, ...] = ()
        self.stop_requested = False
        self._jobs = _Cache(self._fetch_jobs)
        self._sites = _Cache(self._fetch_sites)

    # -- job references ----------------------------------------------------------------
    def resolve_job(self, ref: str) -> str:
        """A full job id from ``ref``: an id, a unique prefix of one, or ``last``.

        Raises:
            JobNotFound: no job id starts with ``ref``.
            InvalidArgumentError: ``ref`` is not hex, or more than one job matches.
        """
        text = ref.strip().lower()
        if text in LAST_JOB:
            rows = self.session.list_jobs(limit=1, reverse=True)
            if not rows:
                raise errors.JobNotFound("there is no job yet; submit one with submit_job PATH")
            return rows[0].job_id
        if is_job_id(text):
            return text
        if not is_job_id_prefix(text):
            raise errors.InvalidArgumentError(
                f"{ref!r} is not a job id or the start of one (hex digits and '-'); "
                "type list_jobs to see the ids, or use 'last'"
            )
        rows = self.session.list_jobs(id_prefix=text, limit=11)
        if not rows:
            raise errors.JobNotFound(f"no job id starts with {ref!r} (see list_jobs)", job_id=ref)
        if len(rows) > 1:
            some = ", ".join(r.job_id[:13] for r in rows[:10])
            more = " and more" if len(rows) > 10 else ""
            raise errors.InvalidArgumentError(
                f"{len(rows)} jobs start with {ref!r} ({some}{more}); type more of the id"
            )
        return rows[0].job_id

    # -- the user ----------------------------------------------------------------------
    def confirm(self, question: str) -> bool:
        """Ask ``question [y/N]``; True only for yes. Without a terminal, refuse (use -y)."""
        if self.assume_yes:
            return True
        if self._ask is None:
            raise errors.InvalidArgumentError(
                f"{question.rstrip('?')}: confirmation needed, but there is no terminal to "
                "ask; add -y to the command (or --yes to flare admin)"
            )
        answer = self._ask(f"{question} [y/N] ").strip().lower()
        return answer in ("y", "yes")

    @contextmanager
    def progress(
        self, description: str, total: int | None = None
    ) -> Iterator[Callable[[int, int], None]]:
        """A ``progress(done, total)`` callback drawing a bar on a terminal (nothing otherwise).

        The callback may be called from another thread (gRPC's sender): rich's Progress
        is thread-safe.
        """
        if self.json_output or not self.console.is_terminal:
            yield _ignore_progress
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)

            def update(done: int, size: int) -> None:
                bar.update(task, completed=done, total=size if size and size > 0 else None)

            yield update

    # -- connection state --------------------------------------------------------------
    def mark(self, ok: bool, error: str = "") -> None:
        """Record the outcome of a call: connected, or disconnected with the reason."""
        self.connection = Connection.CONNECTED if ok else Connection.DISCONNECTED
        self.last_error = "" if ok else error

    def reconnect(self, timeout: float = RECONNECT_SECONDS) -> None:
        """After a lost connection: wait up to ``timeout`` for the server to be back (the
        command that follows then runs at once, or fails fast if it is still away)."""
        try:
            self.session.ping(timeout=min(timeout, self.session.timeout))
        except errors.FlareError:
            return
        self.mark(True)

    def refresh_status(self) -> None:
        """Update the toolbar's figures from the server (marks the connection state)."""
        try:
            info = self.session.get_system_info()
        except errors.NoConnection as exc:
            self.mark(False, exc.message)
            return
        except errors.FlareError:
            return
        self.mark(True)
        self.running_jobs = tuple(j.job_id for j in info.job_info)
        self.sites_connected = len(info.client_info)
        self.expiring = info.expiring

    # -- completion data ---------------------------------------------------------------
    def job_refs(self) -> list[JobRef]:
        """Recent jobs for completion (cached; empty when the server cannot be asked)."""
        return list(self._jobs.get() or ())

    def site_names(self) -> list[str]:
        """Connected sites for completion (cached)."""
        return list(self._sites.get() or ())

    def forget_cached(self) -> None:
        """After a command that changes jobs: completion asks the server again."""
        self._jobs.clear()
        self._sites.clear()

    def _fetch_jobs(self) -> list[JobRef]:
        try:
            rows = self.session.list_jobs(limit=500, reverse=True)
        except errors.FlareError:
            return []
        return [
            JobRef(r.job_id, r.name if isinstance(r, JobMeta) else r.job_name, r.status)
            for r in rows
        ]

    def _fetch_sites(self) -> list[str]:
        try:
            return sorted(s.name for s in self.session.get_connected_client_list())
        except errors.FlareError:
            return []

    @property
    def kit_dir(self) -> Path:
        return Path(self.session.startup_kit_location)


def _ignore_progress(done: int, total: int) -> None:
    return None
