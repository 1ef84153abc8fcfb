"""``make soak``: a real cluster under a steady admin load and random faults, then checks.

Theory of operation. Provision a project (4 sites, one project admin) in a temporary
folder; start ``flare server start`` and ``flare site start`` processes, the sites behind
a cuttable TCP relay (:mod:`bench.soak.cluster`). Run 8 admin threads, each with its own
Session, through a weighted mix of submit, list, monitor, abort, clone, download and delete
(:mod:`bench.soak.workload`) while a fault thread kills sites and the server with SIGKILL
and cuts the network, repairing each (:mod:`bench.soak.faults`), and a sampler records
the server's VmRSS. When the time is up: stop the faults and the load, drain (wait for
running jobs to end, up to a bound), stop the server with SIGTERM and start it again (a
clean restart), account for every acknowledged job through a Session, stop everything
cleanly, then check the workspace's files and that no user process outlived its site
(:mod:`bench.soak.checks`). The report (:mod:`bench.soak.report`) is printed and written
to ``bench/results/soak-<UTC date-time>.md``; the exit status is 1 when any check failed.

Usage::

    .venv/bin/python -m bench.soak                 # SOAK_MINUTES (default 10) minutes
    SOAK_MINUTES=2 .venv/bin/python -m bench.soak  # a short run
    .venv/bin/python -m bench.soak --help          # every option (each also from SOAK_*)

Only 127.0.0.1 is used; every loop stops by itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.soak.checks import RssSampler, account, check_workspace, rss_summary, scan_logs
from bench.soak.cluster import Cluster, job_process_pids, kill_pids
from bench.soak.faults import FaultInjector
from bench.soak.ledger import Ledger, OpStats
from bench.soak.report import judge_rss, render
from bench.soak.workload import AdminWorker, Workload
from flare_admin import APIError, Session, new_secure_session

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_JOB = REPO / "examples" / "hello-numpy"
RESULTS = REPO / "bench" / "results"
NOT_SETTLED = ("DISPATCHED", "RUNNING")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SOAK_{name}", default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=float(_env("MINUTES", "10")))
    p.add_argument("--sites", type=int, default=int(_env("SITES", "4")))
    p.add_argument("--sessions", type=int, default=int(_env("SESSIONS", "8")))
    p.add_argument("--seed", type=int, default=int(_env("SEED", str(int(time.time())))))
    p.add_argument(
        "--fault-every",
        default=_env("FAULT_EVERY", "10,25"),
        help="seconds between faults, MIN,MAX (uniform)",
    )
    p.add_argument(
        "--server-gap",
        type=float,
        default=float(_env("SERVER_GAP_S", "150")),
        help="at least this many seconds between two server kills",
    )
    p.add_argument("--drain", type=float, default=float(_env("DRAIN_S", "180")))
    p.add_argument(
        "--backlog",
        type=int,
        default=int(_env("BACKLOG", "8")),
        help="unfinished jobs at which submits and clones become lists",
    )
    p.add_argument(
        "--keep-jobs",
        type=int,
        default=int(_env("KEEP_JOBS", "150")),
        help="jobs on the server at which submits and clones become deletes",
    )
    p.add_argument("--max-jobs", type=int, default=int(_env("SITE_MAX_JOBS", "2")))
    p.add_argument("--rss-max-mib", type=float, default=float(_env("RSS_MAX_MIB", "256")))
    p.add_argument("--rss-slope", type=float, default=float(_env("RSS_SLOPE_MIB_MIN", "3")))
    p.add_argument("--rss-warmup", type=float, default=float(_env("RSS_WARMUP_S", "30")))
    p.add_argument("--out", type=Path, help="report file (default bench/results/soak-<date>.md)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return p


def _observer(cluster: Cluster) -> Session:
    return new_secure_session(
        cluster.kits.admin_name,
        cluster.kits.admin_kit,
        timeout=10.0,
        server_address=cluster.server.admin_address,
    )


def _wait_sites(cluster: Cluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with _observer(cluster) as s:
                if set(cluster.sites) <= {x.name for x in s.get_connected_client_list()}:
                    return
        except APIError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"not every site connected within {timeout:.0f} s")


def _server_jobs(cluster: Cluster) -> dict[str, str]:
    with _observer(cluster) as s:
        return {row.job_id: row.status for row in s.list_jobs()}


def _drain(cluster: Cluster, bound: float) -> tuple[float, int]:
    """Wait until no job is dispatched or running; (seconds waited, jobs still unsettled)."""
    start = time.monotonic()
    unsettled = -1
    while time.monotonic() - start < bound:
        try:
            jobs = _server_jobs(cluster)
        except APIError:
            time.sleep(1.0)
            continue
        unsettled = sum(1 for s in jobs.values() if not s.startswith(("FINISHED", "SUBMITTED")))
        queued = sum(1 for s in jobs.values() if s == "SUBMITTED")
        if unsettled == 0 and queued == 0:
            break
        time.sleep(1.0)
    return time.monotonic() - start, unsettled


def _progress(started: float, stats: OpStats, faults: FaultInjector, ledger: Ledger) -> None:
    ok = sum(s.ok for s in stats.kinds.values())
    exp = sum(sum(s.expected.values()) for s in stats.kinds.values())
    print(
        f"[soak {time.monotonic() - started:5.0f} s] ops ok {ok}, expected errors {exp}, "
        f"unexpected {stats.unexpected_total()}, faults {len(faults.faults)}, "
        f"backlog {ledger.backlog()}, jobs kept {ledger.live()}",
        file=sys.stderr,
        flush=True,
    )


def _repair(cluster: Cluster) -> None:
    """After the faults stop: server, relay and every site up."""
    cluster.relay.up()
    if cluster.server.pid is None:
        cluster.server.start()
    for site in cluster.sites.values():
        if not site.alive():
            site.start()


def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(timezone.utc)
    root = Path(tempfile.mkdtemp(prefix="flare-soak-"))
    failures: list[str] = []
    sites = [f"site-{i}" for i in range(1, args.sites + 1)]
    print(f"soak: {args.minutes} min, seed {args.seed}, folder {root}", file=sys.stderr)
    cluster = Cluster.start(root, sites, args.max_jobs)
    try:
        _wait_sites(cluster)
        job_folder = root / "job"
        shutil.copytree(EXAMPLE_JOB, job_folder)
        ledger, stats = Ledger(random.Random(args.seed + 1)), OpStats()
        started = time.monotonic()
        workload = Workload(
            admin=cluster.kits.admin_name,
            kit=cluster.kits.admin_kit,
            address=cluster.server.admin_address,
            job_folder=job_folder,
            ledger=ledger,
            stats=stats,
            seed=args.seed,
            backlog_cap=args.backlog,
            keep_jobs=args.keep_jobs,
        )
        workers = [AdminWorker(workload, i) for i in range(args.sessions)]
        sampler = RssSampler(cluster.server, started)
        low, high = (float(x) for x in args.fault_every.split(","))
        injector = FaultInjector(
            cluster,
            cluster.kits.admin_name,
            started,
            random.Random(args.seed + 2),
            (low, high),
            args.server_gap,
        )
        sampler.start()
        for worker in workers:
            worker.start()
        injector.start()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            _progress(started, stats, injector, ledger)
            if any(not w.is_alive() for w in workers) or not injector.is_alive():
                failures.append("a worker or the fault thread ended early")
                break
        injector.stop.set()
        injector.join(180)
        workload.stop.set()
        for worker in workers:
            worker.join(60)
        for thread in [*workers, injector]:
            if thread.crash is not None:  # type: ignore[attr-defined]
                failures.append(f"{thread.name} crashed: {thread.crash!r}")  # type: ignore[attr-defined]
        _repair(cluster)
        _wait_sites(cluster, 90)
        soak_seconds = time.monotonic() - started
        drained, unsettled = _drain(cluster, args.drain)
        print(f"soak: drained in {drained:.0f} s; restarting the server", file=sys.stderr)
        code = cluster.server.stop()
        if code != 0:
            failures.append(f"the server exited with {code} on SIGTERM before the clean restart")
        cluster.server.start()
        server_jobs = _server_jobs(cluster)
        sampler.stop.set()
        accounting = account(ledger.records(), server_jobs)
        failures += [f"stopping: {p}" for p in cluster.stop()]
        left = {s.name: job_process_pids(s.jobs_dir) for s in cluster.sites.values()}
        for name, pids in left.items():
            if pids:
                failures.append(f"{name}: {len(pids)} user process(es) outlived the site")
                kill_pids(pids)
        integrity = check_workspace(cluster.server.workspace)
        rss = judge_rss(
            rss_summary(sampler.samples, args.rss_warmup),
            args.rss_max_mib,
            args.rss_slope,
            min_seconds=120.0,
        )
        if stats.unexpected_total():
            failures.append(f"{stats.unexpected_total()} unexpected error(s) in operations")
        if accounting.lost:
            failures.append(f"{len(accounting.lost)} acknowledged job(s) lost")
        if accounting.stuck:
            failures.append(f"{len(accounting.stuck)} job(s) still running after the drain")
        if accounting.resurrected:
            failures.append(f"{len(accounting.resurrected)} deleted job(s) still listed")
        failures += [
            f"not every site was back within 90 s of the {f.kind} at {f.at:.0f} s"
            for f in injector.faults
            if f.recovered_after is None
        ]
        failures += [f"workspace: {p}" for p in integrity.problems[:10]]
        failures += [f"memory: {p}" for p in rss.problems]
        header = {
            "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average at the end {os.getloadavg()[0]:.1f}",
            "soak": f"{soak_seconds / 60:.1f} min of load and faults, then a drain of "
            f"{drained:.0f} s ({unsettled} job(s) unsettled) and a clean restart",
            "cluster": f"1 server, {args.sites} sites (max {args.max_jobs} jobs each) behind "
            f"a TCP relay, {args.sessions} admin Sessions (threads)",
            "job": "examples/hello-numpy (3 FedAvg rounds, validation every round)",
            "seed": f"{args.seed} (faults every {args.fault_every} s, server kills at least "
            f"{args.server_gap:g} s apart; backlog cap {args.backlog}, store target "
            f"{args.keep_jobs} jobs)",
            "command": f"SOAK_MINUTES={args.minutes:g} make soak",
        }
        text = render(
            header=header,
            stats=stats,
            faults=injector.faults,
            accounting=accounting,
            integrity=integrity,
            rss=rss,
            logs=scan_logs(root / "logs"),
            failures=failures,
        )
        out = args.out or RESULTS / f"soak-{stamp.strftime('%Y-%m-%d-%H%M')}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(text)
        print(f"soak: report written to {out}", file=sys.stderr)
    except BaseException:
        print(f"soak: aborted; its folder is kept: {root}", file=sys.stderr)
        cluster.stop()
        raise
    if failures or args.keep:
        print(f"soak: folder kept: {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
