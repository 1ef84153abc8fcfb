"""The soak's report: markdown tables, printed and written to ``bench/results/``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bench.soak.checks import Accounting, Incarnation, Integrity, LogScan
from bench.soak.faults import Fault
from bench.soak.ledger import OpStats


@dataclass
class RssVerdict:
    incarnations: list[Incarnation]
    max_mib: float
    max_slope: float
    min_seconds_for_slope: float
    problems: list[str] = field(default_factory=list)


def judge_rss(
    incarnations: list[Incarnation], max_mib: float, max_slope: float, min_seconds: float
) -> RssVerdict:
    """Fail when a sample exceeds ``max_mib``, or an incarnation that ran at least
    ``min_seconds`` grew faster than ``max_slope`` MiB/min after its warm-up."""
    verdict = RssVerdict(incarnations, max_mib, max_slope, min_seconds)
    for inc in incarnations:
        if inc.peak_mib > max_mib:
            verdict.problems.append(
                f"incarnation {inc.number}: peak {inc.peak_mib:.0f} MiB > {max_mib:.0f} MiB"
            )
        slope = inc.slope_mib_per_min
        if inc.seconds >= min_seconds and slope is not None and slope > max_slope:
            verdict.problems.append(
                f"incarnation {inc.number}: grew {slope:.2f} MiB/min > {max_slope} MiB/min"
            )
    if not incarnations:
        verdict.problems.append("no RSS sample of the server")
    return verdict


def errors_outside_outages(stats: OpStats, faults: list[Fault], slack: float) -> Counter[str]:
    """Connection-type errors (NoConnection, NoReply) of admin calls that did not happen
    during a server kill (from the kill until every site was back, plus ``slack`` s for a
    call already waiting on its deadline). Site kills and network cuts do not touch the
    admin path, so these should be none."""
    windows = [f.window for f in faults if f.kind == "server_kill"]
    out: Counter[str] = Counter()
    for t, kind, name in stats.expected_at:
        if name in ("NoConnection", "NoReply") and not any(a <= t <= b + slack for a, b in windows):
            out[f"{kind} {name}"] += 1
    return out


def _whole_run(incarnations: list[Incarnation]) -> str:
    if not incarnations:
        return "No sample."
    first, last = incarnations[0].first_mib, incarnations[-1].last_mib
    peak = max(i.peak_mib for i in incarnations)
    slopes = [i.slope_mib_per_min for i in incarnations if i.slope_mib_per_min is not None]
    worst = f"{max(slopes):+.2f} MiB/min" if slopes else "-"
    return (
        f"Whole run: first {first:.1f} MiB, peak {peak:.1f} MiB, last {last:.1f} MiB; "
        f"steepest incarnation slope {worst}."
    )


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.1f}" if values else "-"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "-"


def render(
    *,
    header: dict[str, str],
    stats: OpStats,
    faults: list[Fault],
    accounting: Accounting,
    integrity: Integrity,
    rss: RssVerdict,
    logs: LogScan,
    failures: list[str],
) -> str:
    lines = ["# Soak run", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", f"**Verdict: {'PASS' if not failures else 'FAIL'}**", ""]
    for failure in failures:
        lines.append(f"- FAIL: {failure}")
    lines += ["", "## Operations", ""]
    lines += [
        "| operation | count | ok | expected errors (by type) | unexpected errors | "
        "p50 ms | p99 ms |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    order = ["submit", "list", "monitor", "abort", "clone", "download", "delete", "open"]
    for kind in sorted(stats.kinds, key=lambda k: order.index(k) if k in order else 99):
        s = stats.kinds[kind]
        count = s.ok + sum(s.expected.values()) + sum(s.unexpected.values())
        lines.append(
            f"| {kind} | {count} | {s.ok} | {_counts(s.expected)} | {_counts(s.unexpected)} "
            f"| {_ms(s.latencies, 50)} | {_ms(s.latencies, 99)} |"
        )
    lines += [
        "",
        "Submits and clones turned into lists while the backlog was full: "
        f"{stats.substituted['list']}; into deletes while the store held its target of jobs: "
        f"{stats.substituted['delete']} (counted above as what they became).",
        "`open` is a Session (re)opened by a worker. Latencies are of successful calls.",
    ]
    outside = errors_outside_outages(stats, faults, slack=15.0)
    lines += [
        "Connection errors (NoConnection, NoReply) outside a server kill (+15 s): "
        f"{sum(outside.values())}" + (f" ({_counts(outside)})." if outside else "."),
    ]
    samples = [x for s in stats.kinds.values() for x in s.unexpected_samples]
    if samples:
        lines += ["", "Unexpected errors (first of each kind):", ""]
        lines += [f"- `{x}`" for x in samples]
    lines += ["", "## Faults injected", ""]
    lines += ["| fault | count | outage s (mean, max) | all sites back after s (mean, max) |"]
    lines += ["|---|---:|---|---|"]
    for kind in ("site_kill", "server_kill", "network_cut"):
        mine = [f for f in faults if f.kind == kind]
        out = [f.outage for f in mine]
        rec = [f.recovered_after for f in mine if f.recovered_after is not None]
        never = sum(1 for f in mine if f.recovered_after is None)
        rec_text = f"{np.mean(rec):.1f}, {max(rec):.1f}" if rec else "-"
        if never:
            rec_text += f" ({never} not within 90 s)"
        out_text = f"{np.mean(out):.1f}, {max(out):.1f}" if out else "-"
        lines.append(f"| {kind} | {len(mine)} | {out_text} | {rec_text} |")
    if faults:
        lines += ["", "Timeline (s since the start; back = every site connected again):", ""]
        lines += ["| at s | fault | target | outage s | back after s | note |"]
        lines += ["|---:|---|---|---:|---:|---|"]
        for f in faults:
            back = "never (90 s)" if f.recovered_after is None else f"{f.recovered_after:.1f}"
            lines.append(
                f"| {f.at:.0f} | {f.kind} | {f.target} | {f.outage:.1f} | {back} | {f.note} |"
            )
    a = accounting
    lines += ["", "## Jobs", ""]
    lines += ["| | count |", "|---|---:|"]
    lines += [
        f"| acknowledged (submit / clone) | {a.acknowledged} "
        f"({a.by_origin['submit']} / {a.by_origin['clone']}) |",
        f"| deleted by the soak (acknowledged) | {a.deleted} |",
        f"| delete not acknowledged (either state accepted) | {a.delete_unacknowledged} |",
        f"| **lost** | **{len(a.lost)}** |",
        f"| still running after the drain | {len(a.stuck)} |",
        f"| deleted yet still listed | {len(a.resurrected)} |",
        f"| on the server without an acknowledged submit | {a.unacknowledged_present} |",
    ]
    lines += ["", "Final states of the acknowledged jobs still present:", ""]
    lines += ["| status | jobs |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in a.final_states.most_common()]
    for title, ids in (("Lost", a.lost), ("Stuck", a.stuck), ("Resurrected", a.resurrected)):
        if ids:
            lines += ["", f"{title}: " + ", ".join(ids[:20])]
    i = integrity
    lines += ["", "## Server workspace after a clean stop", ""]
    lines += ["| check | result |", "|---|---|"]
    lines += [
        f"| rows in jobs.db | {i.rows} |",
        f"| job.zip size and SHA-256 match the row, zip reads | {i.archives_checked} checked |",
        f"| .json files parse | {i.json_files} |",
        f"| .jsonl files: every line parses, ends with a newline | {i.jsonl_files} |",
        f"| .npz files load without pickle | {i.npz_files} |",
        f"| problems (temp files, orphans, half-written files) | {len(i.problems)} |",
    ]
    if i.problems:
        lines += [""] + [f"- {p}" for p in i.problems[:30]]
    lines += ["", "## Errors in the processes' logs", ""]
    tb = ", ".join(f"{k} {v}" for k, v in sorted(logs.tracebacks.items())) or "none"
    lines += [f"Tracebacks: {tb}. ERROR/CRITICAL lines, by shape (most frequent first):", ""]
    if logs.errors:
        lines += ["| count | process: line (ids and numbers as #) |", "|---:|---|"]
        for shape, n in logs.errors.most_common(15):
            lines.append(f"| {n} | `{shape.replace('|', '/')}` |")
    else:
        lines.append("none")
    if logs.warnings:
        lines += ["", "WARNING lines, by shape (the most frequent 10):", ""]
        lines += ["| count | process: line (ids and numbers as #) |", "|---:|---|"]
        for shape, n in logs.warnings.most_common(10):
            lines.append(f"| {n} | `{shape.replace('|', '/')}` |")
    lines += ["", "## Server memory (VmRSS)", ""]
    lines += [
        f"Bound: every sample ≤ {rss.max_mib:.0f} MiB, and an incarnation that ran at least "
        f"{rss.min_seconds_for_slope:.0f} s grows at most {rss.max_slope} MiB/min after its "
        "warm-up (least squares). An incarnation is one start of the server process.",
        "",
        _whole_run(rss.incarnations),
        "",
        "| incarnation | from s | ran s | first MiB | peak MiB | last MiB | slope MiB/min |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for inc in rss.incarnations:
        slope = "-" if inc.slope_mib_per_min is None else f"{inc.slope_mib_per_min:+.2f}"
        lines.append(
            f"| {inc.number} | {inc.start:.0f} | {inc.seconds:.0f} | {inc.first_mib:.1f} "
            f"| {inc.peak_mib:.1f} | {inc.last_mib:.1f} | {slope} |"
        )
    return "\n".join(lines) + "\n"
