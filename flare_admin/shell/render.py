"""Turn Session results and shell views into rich renderables (tables, trees, plain text).

One function per kind of result; :func:`renderables` picks by type. Styles come only
from :mod:`flare_admin.shell.theme`. Text that came from the server (file contents, log
lines, job names) is wrapped in :class:`~rich.text.Text`, never parsed as markup, so a
file holding ``[red]`` prints as written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from flare_admin.results import (
    JobMeta,
    JobRunSummary,
    JobSummary,
    MetricRow,
    SiteInfo,
    SystemInfo,
    ValidationRow,
    rounds_table,
)
from flare_admin.shell.theme import status_style
from flare_admin.shell.views import (
    Done,
    MessagesView,
    MetricsView,
    ParamsView,
    SessionView,
    ValidationsView,
)

__all__ = [
    "duration_text",
    "jobs_table",
    "mapping_tree",
    "messages_table",
    "meta_table",
    "metrics_view",
    "renderables",
    "rounds_metrics_table",
    "sites_table",
    "sparkline",
    "status_text",
    "system_view",
    "time_text",
    "validations_table",
]

_BLOCKS = "▁▂▃▄▅▆▇█"
SHORT_ID = 8


def status_text(status: Any) -> Text:
    """A job status in its theme colour."""
    text = str(getattr(status, "value", status) or "?")
    return Text(text, style=status_style(text))


def time_text(value: float | str | None, *, short: bool = False) -> str:
    """Local ``YYYY-MM-DD HH:MM:SS`` (``short``: ``MM-DD HH:MM``) for a unix time or ISO
    text; ``-`` when unset."""
    if value in (None, "", 0, 0.0):
        return "-"
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
        else:
            moment = datetime.fromtimestamp(float(value)).astimezone()
    except (ValueError, OverflowError, OSError):
        return str(value)
    return moment.astimezone().strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def duration_text(seconds: float | None) -> str:
    """``4.2s``, ``3m 05s``, ``2h 01m``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def short_id(job_id: str, full: bool = False) -> Text:
    return Text(job_id if full else job_id[:SHORT_ID], style="id")


class JobsTable:
    """``list_jobs``: id, name, status, submitted, duration and, when there is room, who."""

    #: Below this width the submitter column is left out and times are shorter.
    WIDE = 100

    def __init__(self, rows: Sequence[JobSummary | JobMeta]) -> None:
        self.rows = rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows:
            yield _empty("no jobs")
            return
        wide = options.max_width >= self.WIDE
        table = Table(show_edge=False, pad_edge=False, caption=f"{len(self.rows)} job(s)")
        table.add_column("ID", no_wrap=True)
        table.add_column("NAME", overflow="fold", min_width=8)
        table.add_column("STATUS", no_wrap=True)
        table.add_column("SUBMITTED", no_wrap=True)
        table.add_column("DURATION", justify="right", no_wrap=True)
        if wide:
            table.add_column("BY", overflow="fold")
        for row in self.rows:
            if isinstance(row, JobMeta):
                name, submitted = row.name, row.submit_time_iso or row.submit_time
            else:
                name, submitted = row.job_name, row.submit_time
            cells: list[RenderableType] = [
                short_id(row.job_id),
                Text(name),
                status_text(row.status),
                time_text(submitted, short=not wide),
                duration_text(row.duration),
            ]
            if wide:
                cells.append(Text(row.submitter_name))
            table.add_row(*cells)
        yield table


def jobs_table(rows: Sequence[JobSummary | JobMeta]) -> RenderableType:
    """``list_jobs`` rows as a table (see :class:`JobsTable`)."""
    return JobsTable(rows)


def _value_text(value: Any) -> Text:
    if isinstance(value, (Mapping, list, tuple)):
        return Text(json.dumps(value, default=str, sort_keys=True))
    return Text("-" if value is None else str(value))


def meta_table(meta: JobMeta) -> Table:
    """``get_job_meta``: every key of the meta, times made readable, status coloured."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="key", no_wrap=True)
    table.add_column(overflow="fold")
    for key in sorted(meta):
        value = meta[key]
        if key == "status":
            cell: Text = status_text(value)
        elif key.endswith("_time") and isinstance(value, (int, float)):
            cell = Text(time_text(value))
        elif key == "duration" and isinstance(value, (int, float)):
            cell = Text(duration_text(float(value)))
        elif key.endswith("_history") and isinstance(value, list):
            cell = history_text(value)
        else:
            cell = _value_text(value)
        table.add_row(key, cell)
    return table


def history_text(entries: Sequence[Any]) -> Text:
    """A status or schedule history: one ``HH:MM:SS STATUS reason`` line per entry."""
    lines = Text()
    for entry in entries:
        if not isinstance(entry, Mapping):
            lines.append(f"{entry}\n")
            continue
        when = entry.get("time")
        stamp = time_text(when)[-8:] if isinstance(when, (int, float)) else "-"
        lines.append(f"{stamp} ", style="muted")
        status = entry.get("status")
        if status:
            lines.append_text(status_text(status))
        reason = entry.get("reason") or entry.get("message")
        if reason:
            lines.append(f" {reason}")
        lines.append("\n")
    lines.rstrip()
    return lines or Text("-")


def peer_text(address: str) -> str:
    """gRPC's peer string as a person writes it: ``ipv6:%5B::1%5D:5`` -> ``[::1]:5``."""
    from urllib.parse import unquote

    for scheme in ("ipv4:", "ipv6:"):
        if address.startswith(scheme):
            return unquote(address[len(scheme) :])
    return address


def sites_table(sites: Sequence[SiteInfo]) -> RenderableType:
    """Connected sites: name, org, address, connected since, last heartbeat, jobs."""
    if not sites:
        return _empty("no site is connected")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("SITE", "ORG", "ADDRESS", "CONNECTED", "HEARTBEAT", "JOBS"):
        table.add_column(col, no_wrap=col in ("CONNECTED", "HEARTBEAT"))
    for site in sites:
        table.add_row(
            Text(site.name, style="site"),
            Text(site.org),
            Text(peer_text(site.address)),
            time_text(site.connected_since),
            time_text(site.last_connect_time),
            Text(", ".join(j[:SHORT_ID] for j in site.running_jobs) or "-"),
        )
    return table


def system_view(info: SystemInfo) -> RenderableType:
    """``sys_info`` / ``check_status server``: the server, its sites and running jobs."""
    server = info.server_info
    head = Table.grid(padding=(0, 2))
    head.add_column(style="key")
    head.add_column()
    head.add_row("server", Text(server.name))
    head.add_row("project", Text(server.project))
    head.add_row("version", Text(server.version or "-"))
    head.add_row("started", time_text(server.start_time))
    head.add_row("sites", str(len(info.client_info)))
    head.add_row("running jobs", str(len(info.job_info)))
    parts: list[RenderableType] = [head]
    if info.client_info:
        parts += [Text(""), sites_table(info.client_info)]
    if info.job_info:
        parts += [Text(""), jobs_table(info.job_info)]
    for entry in info.expiring:
        parts.append(Text.assemble(("warning: ", "warning"), entry.describe()))
    return Group(*parts)


def client_status_table(rows: Sequence[Mapping[str, Any]]) -> RenderableType:
    """``check_status client``: per site, the jobs it runs."""
    if not rows:
        return _empty("no site is connected")
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("SITE")
    table.add_column("RUNNING JOBS")
    for row in rows:
        jobs = row.get("running_jobs") or ()
        table.add_row(
            Text(str(row.get("name", "?")), style="site"),
            Text(", ".join(str(j)[:SHORT_ID] for j in jobs) or "-"),
        )
    return table


def sparkline(values: Iterable[float]) -> str:
    """One block character per value, scaled between the smallest and the largest."""
    points = [v for v in values]
    finite = [v for v in points if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low
    out = []
    for v in points:
        if not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(_BLOCKS[len(_BLOCKS) // 2])
        else:
            out.append(_BLOCKS[round((v - low) / span * (len(_BLOCKS) - 1))])
    return "".join(out)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def metrics_view(view: MetricsView) -> RenderableType:
    """``metrics``: a round × site table of one key, a sparkline per site, and the keys."""
    if not view.rows:
        return _empty(f"job {view.job_id[:SHORT_ID]} has logged no metrics yet")
    key = view.plotted_key()
    parts: list[RenderableType] = []
    keys = view.keys()
    if len(keys) > 1:
        parts.append(Text(f"metrics: {', '.join(keys)} (choose the table's with --key)", "muted"))
    if key is None:
        parts.append(Text("no metric carries a round number; showing none per round", "muted"))
        return Group(*parts)
    table_data = view.per_round(key)
    sites = sorted({s for cells in table_data.values() for s in cells})
    table = Table(title=Text(key, style="metric"), show_edge=False, pad_edge=False)
    table.add_column("ROUND", justify="right")
    for site in sites:
        table.add_column(site, justify="right", header_style="site")
    if len(sites) > 1:
        table.add_column("MEAN", justify="right", style="key")
    for rnd, cells in table_data.items():
        values = [cells.get(s) for s in sites]
        row = [str(rnd), *(_number(v) for v in values)]
        if len(sites) > 1:
            present = [v for v in values if v is not None and math.isfinite(v)]
            row.append(_number(sum(present) / len(present)) if present else "-")
        table.add_row(*row)
    parts.append(table)
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="site")
    lines.add_column(style="metric")
    lines.add_column(style="muted")
    for site in sites:
        series = [cells[site] for cells in table_data.values() if site in cells]
        if series:
            lines.add_row(site, sparkline(series), f"{_number(series[0])} → {_number(series[-1])}")
    parts += [Text(""), lines]
    return Group(*parts)


def rounds_metrics_table(
    metrics: Iterable[MetricRow], validations: Iterable[ValidationRow] = (), title: str = ""
) -> RenderableType:
    """Every metric at once: per round and site, the last value of each key (validations
    as ``val:`` keys), e.g. the end of ``flare simulate``."""
    table = Table(title=title or None, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("ROUND", justify="right")
    table.add_column("SITE", style="site")
    table.add_column("METRICS", overflow="fold")
    for rnd, per_site in rounds_table(metrics, validations).items():
        for site in sorted(per_site):
            values = "  ".join(f"{k}={_number(v)}" for k, v in sorted(per_site[site].items()))
            table.add_row(str(rnd), Text(site), Text(values))
    return table


def params_table(view: ParamsView) -> RenderableType:
    """``params``: each recorded param, tag or text (texts cut to one line)."""
    if not view.rows:
        return _empty(f"job {view.job_id[:SHORT_ID]} has recorded no params, tags or texts")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("SITE", "ROUND", "KIND", "KEY", "VALUE"):
        table.add_column(col, overflow="fold" if col == "VALUE" else "ellipsis")
    for row in view.rows:
        lines = str(row.value).splitlines() or [""]
        value = lines[0] + (" …" if len(lines) > 1 else "")
        table.add_row(
            Text(row.site, style="site"),
            "-" if row.round is None else str(row.round),
            row.kind,
            Text(row.key, style="key"),
            Text(value),
        )
    return table


def messages_table(view: MessagesView) -> RenderableType:
    """``messages``: a driver job's message log, one line per message or reply."""
    if not view.rows:
        return _empty(f"job {view.job_id[:SHORT_ID]} has no driver messages")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("TIME", "EVENT", "TYPE", "GROUP", "FROM", "TO", "BYTES", "LATENCY", "ID / ERROR"):
        right = col in ("BYTES", "LATENCY")
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for row in view.rows:
        ident = (row.message_id or row.reply_to or "")[:SHORT_ID]
        detail = row.error or row.reason
        style = "error" if detail else ("key" if row.event == "sent" else "")
        table.add_row(
            time_text(row.time),
            Text(row.event, style=style),
            row.message_type or "-",
            row.group_id or "-",
            Text(row.src or "-", style="site"),
            Text(row.dst or "-", style="site"),
            str(row.bytes),
            "-" if row.latency is None else f"{row.latency * 1000:.1f} ms",
            Text(detail.splitlines()[0][:120], style="error") if detail else ident,
        )
    return table


def validations_table(view: ValidationsView) -> RenderableType:
    """``validations``: per round and site, each validation metric."""
    if not view.rows:
        return _empty(f"job {view.job_id[:SHORT_ID]} has no validation results yet")
    names = list(dict.fromkeys(k for r in view.rows for k in r.metrics))
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("ROUND", justify="right")
    table.add_column("SITE", style="site")
    for name in names:
        table.add_column(name, justify="right")
    for row in sorted(view.rows, key=lambda r: (r.round or 0, r.site)):
        table.add_row(
            "-" if row.round is None else str(row.round),
            row.site,
            *(_number(row.metrics.get(n)) for n in names),
        )
    return table


def mapping_tree(title: str, data: Any) -> Tree:
    """Nested mappings and lists as a tree (stats, errors, summaries)."""
    tree = Tree(Text(title, style="key"), hide_root=not title)
    _grow(tree, data)
    return tree


def _grow(node: Tree, data: Any) -> None:
    if isinstance(data, Mapping):
        if not data:
            node.add(Text("(empty)", style="muted"))
        for key, value in data.items():
            if isinstance(value, (Mapping, list, tuple)) and value:
                _grow(node.add(Text(str(key), style="key")), value)
            else:
                node.add(Text.assemble((str(key), "key"), ": ", _value_text(value)))
    elif isinstance(data, (list, tuple)):
        if not data:
            node.add(Text("(none)", style="muted"))
        for i, value in enumerate(data):
            if isinstance(value, (Mapping, list, tuple)):
                _grow(node.add(Text(f"[{i}]", style="muted")), value)
            else:
                node.add(_value_text(value))
    else:
        node.add(_value_text(data))


def summary_view(summary: JobRunSummary) -> RenderableType:
    """``summary``: how a job's run went, and who contributed to each round."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="key", no_wrap=True)
    head.add_column(overflow="fold")
    failed_style = "error" if summary.failed_sites else ""
    rounds = f"{summary.rounds_completed}" + (
        f" of {summary.num_rounds}" if summary.num_rounds else ""
    )
    for key, value in (
        ("job", Text.assemble((summary.job_id, "id"), f"  {summary.name}")),
        ("status", status_text(summary.status)),
        ("reason", Text(summary.reason or "-")),
        ("workflow", Text(summary.workflow or "-")),
        ("rounds", Text(rounds)),
        ("sites", Text(", ".join(summary.sites) or "-")),
        ("failed sites", Text(", ".join(summary.failed_sites) or "-", style=failed_style)),
        ("final model", Text("yes" if summary.has_final_model else "no")),
        ("took", Text(duration_text(summary.duration))),
    ):
        head.add_row(key, value)
    if not summary.rounds:
        return head
    sites = sorted({s for r in summary.rounds for s in r.participants} | set(summary.sites))
    table = Table(show_edge=False, pad_edge=False, title="examples per site and round")
    table.add_column("ROUND", justify="right")
    for site in sites:
        table.add_column(site, justify="right", header_style="site")
    table.add_column("LATE / LOST", style="warning")
    for rnd in summary.rounds:
        missing = [*(f"{s} late" for s in rnd.late_sites), *(f"{s} lost" for s in rnd.lost_sites)]
        table.add_row(
            str(rnd.round),
            *(str(rnd.participants[s]) if s in rnd.participants else "-" for s in sites),
            ", ".join(missing),
        )
    return Group(head, Text(""), table)


def session_view(view: SessionView) -> RenderableType:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="key")
    table.add_column()
    for key, value in view.to_dict().items():
        table.add_row(key, Text("-" if value in (None, "") else str(value)))
    return table


def text_block(text: str, truncated: bool = False) -> RenderableType:
    """Server text printed as written; a note when the server cut it."""
    body = Text(text.rstrip("\n"), no_wrap=True, overflow="ignore")
    if truncated:
        return Group(body, Text("[output truncated by the server's size cap]", style="warning"))
    return body


def _empty(message: str) -> Text:
    return Text(message, style="muted")


_RENDERERS: tuple[tuple[type, Callable[[Any], RenderableType]], ...] = (
    (Done, lambda done: Text(done.text, style="ok")),
    (SessionView, session_view),
    (MetricsView, metrics_view),
    (ValidationsView, validations_table),
    (ParamsView, params_table),
    (MessagesView, messages_table),
    (SystemInfo, system_view),
    (JobMeta, meta_table),
    (JobRunSummary, summary_view),
)


def renderables(result: Any) -> list[RenderableType]:
    """What to print for a command's result (nothing for None)."""
    if result is None:
        return []
    for kind, render in _RENDERERS:
        if isinstance(result, kind):
            return [render(result)]
    if isinstance(result, str):
        return [text_block(result, bool(getattr(result, "truncated", False)))]
    if isinstance(result, list | tuple):
        if not result:
            return [_empty("(none)")]
        first = result[0]
        if isinstance(first, (JobSummary, JobMeta)):
            return [jobs_table(result)]
        if isinstance(first, SiteInfo):
            return [sites_table(result)]
        if isinstance(first, Mapping) and "running_jobs" in first:
            return [client_status_table(result)]
    if isinstance(result, Mapping):
        return [mapping_tree(getattr(result, "title", ""), result)]
    if hasattr(result, "__rich_console__") or hasattr(result, "__rich__"):
        return [result]
    return [Text(str(result))]
