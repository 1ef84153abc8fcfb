"""``monitor_job`` / ``watch``: a job's live view, driven by the server's push.

A worker thread reads :meth:`Session.watch_job` (meta changes, metric and validation
rows as they arrive) into a queue; the calling thread owns the screen. It redraws on
every event and twice a second for the clock, with rich's ``Live`` in manual refresh
mode, so no rich thread exists that Ctrl-C could leave holding a lock. Ctrl-C, a
timeout or the job's end stop the watch (the stream is cancelled; the job runs on).

On a terminal the view is a table (status, round k of n, per-site round and latest
metrics, a sparkline of the first per-round metric); without one it prints a plain line
per change; with ``--format json`` it draws nothing and returns the final state.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from flare_admin.results import (
    JobEvent,
    JobMeta,
    MetaChanged,
    MetricRow,
    MetricsArrived,
    ValidationRow,
    ValidationsArrived,
)
from flare_admin.shell.render import duration_text, sparkline, status_text
from flare_admin.shell.theme import THEME
from flare_admin.shell.views import Done, last_per_round
from flare_protocol import errors
from flare_protocol.job_status import JobStatus

if TYPE_CHECKING:
    from flare_admin.session import Session

__all__ = ["JobProgress", "follow_job"]

_TICK = 0.5
_END = object()


@dataclass
class SiteState:
    """What the view knows of one site in the job."""

    name: str
    round: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    updated: float = 0.0


class JobProgress:
    """The state a live view shows, folded from watch events (no I/O; testable alone)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.meta: JobMeta | None = None
        self.sites: dict[str, SiteState] = {}
        self.metrics: list[MetricRow] = []
        self.validations: list[ValidationRow] = []
        self.started = time.monotonic()
        self.changes: list[str] = []  # plain-text lines for a non-terminal

    # -- folding events --------------------------------------------------------------------
    def apply(self, event: JobEvent) -> None:
        """Fold one watch event (a meta change, metric rows or validation rows)."""
        if isinstance(event, MetaChanged):
            self._meta(event.meta)
        elif isinstance(event, MetricsArrived):
            for row in event.rows:
                self._metric(row)
        elif isinstance(event, ValidationsArrived):
            for val in event.rows:
                self._validation(val)

    def _meta(self, meta: JobMeta) -> None:
        before = self.meta
        self.meta = meta
        for name in self.site_names():
            self.sites.setdefault(name, SiteState(name))
        status_changed = before is None or before.status != meta.status
        round_changed = before is None or self.current_round(before) != self.current_round(meta)
        if status_changed or round_changed:
            self.changes.append(self.line())
        done = meta.get("rounds_completed") if "rounds_completed" in meta else None
        if (
            isinstance(done, int)
            and done
            and (before is None or before.get("rounds_completed") != done)
        ):
            self.changes.append(self.round_line(done))

    def _metric(self, row: MetricRow) -> None:
        self.metrics.append(row)
        state = self.sites.setdefault(row.site, SiteState(row.site))
        if row.round is not None and (state.round is None or row.round >= state.round):
            state.round = row.round
        state.metrics[row.key] = row.value
        state.updated = row.time or time.time()

    def _validation(self, row: ValidationRow) -> None:
        self.validations.append(row)
        state = self.sites.setdefault(row.site, SiteState(row.site))
        for key, value in row.metrics.items():
            state.metrics[key if key.startswith("val") else f"val_{key}"] = value

    # -- reading ---------------------------------------------------------------------------
    def site_names(self) -> list[str]:
        meta = self.meta
        names: list[str] = []
        if meta is not None:
            deployed = meta.get("deployed_sites") if "deployed_sites" in meta else None
            if isinstance(deployed, list):
                names = [str(s) for s in deployed]
        return names

    @staticmethod
    def current_round(meta: JobMeta | None) -> int | None:
        if meta is None or "current_round" not in meta:
            return None
        value = meta["current_round"]
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def total_rounds(self) -> int | None:
        meta = self.meta
        for key in ("num_rounds", "total_rounds"):
            if meta is not None and key in meta:
                value = meta[key]
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
        return None

    @property
    def status(self) -> str:
        return self.meta.status if self.meta is not None else "?"

    @property
    def finished(self) -> bool:
        return self.meta is not None and self.meta.finished

    def elapsed(self) -> float | None:
        meta = self.meta
        if meta is None:
            return None
        if meta.finished and meta.duration is not None:
            return meta.duration
        if meta.start_time:
            return max(0.0, time.time() - meta.start_time)
        return None

    def round_text(self) -> str:
        rnd, total = self.current_round(self.meta), self.total_rounds()
        if rnd is None:
            return "round -"
        return f"round {rnd}" + (f" of {total}" if total else "")

    def line(self) -> str:
        """One plain line: time, status, round (for logs and pipes)."""
        name = self.meta.name if self.meta is not None else ""
        stamp = time.strftime("%H:%M:%S")
        return f"{stamp} job {self.job_id[:8]} {name}: {self.status}, {self.round_text()}"

    def reason(self) -> str:
        """The reason recorded with the latest status (first line), or ``""``."""
        history = self.meta.get("status_history") if self.meta is not None else None
        if isinstance(history, list) and history and isinstance(history[-1], dict):
            lines = str(history[-1].get("reason") or "").splitlines()
            return lines[0] if lines else ""
        return ""

    def round_line(self, rnd: int) -> str:
        """One plain line with each site's last metrics of round ``rnd``."""
        per_site: dict[str, dict[str, float]] = {}
        for row in self.metrics:
            if row.round == rnd:
                per_site.setdefault(row.site, {})[row.key] = row.value
        values = "; ".join(
            f"{site} " + " ".join(f"{k}={v:.4g}" for k, v in sorted(cells.items()))
            for site, cells in sorted(per_site.items())
        )
        stamp = time.strftime("%H:%M:%S")
        return f"{stamp} job {self.job_id[:8]}: round {rnd} aggregated" + (
            f": {values}" if values else ""
        )

    def plot_key(self) -> str | None:
        keys = [r.key for r in self.metrics if r.round is not None]
        return keys[0] if keys else None

    def mean_per_round(self, key: str) -> list[float]:
        """Per round, the mean over sites of each site's last value of ``key`` (as the
        ``metrics`` table shows it)."""
        return [sum(v.values()) / len(v) for v in last_per_round(self.metrics, key).values()]

    # -- drawing ---------------------------------------------------------------------------
    def render(self) -> RenderableType:
        name = self.meta.name if self.meta is not None else ""
        elapsed = self.elapsed()
        head = Text.assemble(
            (name or "job", "key"),
            "  ",
            (self.job_id[:8], "id"),
            "  ",
            status_text(self.status),
            "  ",
            self.round_text(),
            "  ",
            (duration_text(elapsed) if elapsed is not None else "", "muted"),
        )
        parts: list[RenderableType] = [head]
        if self.sites:
            table = Table(show_edge=False, pad_edge=False, expand=False)
            table.add_column("SITE", style="site")
            table.add_column("ROUND", justify="right")
            table.add_column("LATEST METRICS", overflow="fold")
            for state in sorted(self.sites.values(), key=lambda s: s.name):
                latest = "  ".join(f"{k} {v:.4g}" for k, v in sorted(state.metrics.items()))
                table.add_row(
                    state.name,
                    "-" if state.round is None else str(state.round),
                    Text(latest or "-"),
                )
            parts.append(table)
        key = self.plot_key()
        if key is not None:
            means = self.mean_per_round(key)
            if len(means) > 1:
                parts.append(
                    Text.assemble(
                        (f"{key} ", "metric"),
                        sparkline(means),
                        (f"  {means[0]:.4g} → {means[-1]:.4g}", "muted"),
                    )
                )
        return Group(*parts)

    def outcome(self) -> Done:
        meta = self.meta
        data = meta.to_dict() if meta is not None else {"job_id": self.job_id}
        if meta is None:
            return Done(f"job {self.job_id} was not seen", data)
        took = duration_text(self.elapsed())
        if meta.finished:
            reason = "" if meta.job_status is JobStatus.FINISHED_COMPLETED else self.reason()
            return Done(
                f"job {self.job_id[:8]} {meta.name}: {meta.status} ({self.round_text()}, {took})"
                + (f": {reason}" if reason else ""),
                data,
            )
        return Done(
            f"stopped watching job {self.job_id[:8]}: it is {meta.status} and keeps running", data
        )


def follow_job(
    session: Session,
    console: Console,
    job_id: str,
    *,
    timeout: float = 0.0,
    json_output: bool = False,
    interactive: bool = False,
) -> Done:
    """Watch ``job_id`` until it finishes, ``timeout`` seconds pass (0: no limit) or Ctrl-C;
    draw on ``console`` (a live table on a terminal, plain lines otherwise, nothing for
    ``json_output``). The outcome's data is the last meta seen.

    Raises:
        KeyboardInterrupt: Ctrl-C, unless ``interactive`` (then it only stops watching).
        FlareError: the watch failed (unknown job, no right, connection lost).
    """
    progress = JobProgress(job_id)
    events = session.watch_job(job_id, timeout=timeout or None)
    inbox = _read_in_background(events)
    try:
        with console.use_theme(THEME):  # any console: the caller's may not know our styles
            if json_output:
                _consume(inbox, progress, lambda: None)
            elif console.is_terminal:
                from rich.live import Live

                with Live(progress.render(), console=console, auto_refresh=False) as live:
                    _consume(inbox, progress, lambda: live.update(progress.render(), refresh=True))
            else:
                _consume(inbox, progress, _printer(progress, console))
    except errors.JobTimeout:
        pass  # --timeout: stop watching; the outcome says the job keeps running
    except KeyboardInterrupt:
        if not interactive:
            raise
    finally:
        events.cancel()  # the reader thread's next() then ends
    return progress.outcome()


def _read_in_background(events: Any) -> queue.Queue[Any]:
    """A daemon thread moves the watch's events (then an exception, then the end) into a
    queue, so the screen thread never blocks inside gRPC."""
    inbox: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for event in events:
                inbox.put(event)
        except BaseException as exc:
            inbox.put(exc)
        finally:
            inbox.put(_END)

    threading.Thread(target=read, name="flare-watch", daemon=True).start()
    return inbox


def _printer(progress: JobProgress, console: Console) -> Callable[[], None]:
    """Prints the view's new plain lines (a pipe or a log file: one line per change)."""
    printed = 0

    def echo() -> None:
        nonlocal printed
        for change in progress.changes[printed:]:
            console.print(change, markup=False, highlight=False)
        printed = len(progress.changes)

    return echo


def _consume(inbox: queue.Queue[Any], progress: JobProgress, redraw: Callable[[], None]) -> None:
    while True:
        try:
            item = inbox.get(timeout=_TICK)
        except queue.Empty:
            redraw()  # the clock
            continue
        if item is _END:
            redraw()
            return
        if isinstance(item, BaseException):
            raise item
        progress.apply(item)
        redraw()
