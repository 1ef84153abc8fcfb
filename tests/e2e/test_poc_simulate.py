"""``flare simulate`` and ``make demo``: a job end to end on a throw-away local project."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flare_local.simulate import simulation_sites
from flare_protocol.errors import FlareError

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"


def _simulate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flare_cli.main", "simulate", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={"COLUMNS": "200", **__import__("os").environ},
    )


def _hanging_job(tmp_path: Path) -> Path:
    job = tmp_path / "hang"
    shutil.copytree(HELLO, job)
    (job / "app" / "custom" / "train.py").write_text(
        "import time\nimport flare_site.client as flare\nflare.init()\ntime.sleep(600)\n"
    )
    return job


def test_sites_come_from_the_deploy_map_then_site_n(tmp_path):
    job = tmp_path / "job"
    shutil.copytree(HELLO, job)
    meta = json.loads((job / "meta.json").read_text())
    meta["deploy_map"] = {"app": ["server", "hospital-a"]}
    meta["min_clients"] = 1
    (job / "meta.json").write_text(json.dumps(meta))
    assert simulation_sites(job, 2) == ["hospital-a", "site-1"]
    assert simulation_sites(HELLO, 3) == ["site-1", "site-2", "site-3"]


def test_too_few_sites_for_min_clients_is_refused_naming_the_fix():
    with pytest.raises(FlareError, match="-n 2"):
        simulation_sites(HELLO, 1)


def test_an_invalid_job_exits_2_naming_the_file(tmp_path):
    job = tmp_path / "broken"
    shutil.copytree(HELLO, job)
    (job / "meta.json").write_text("{not json")
    done = _simulate(str(job), "-w", str(tmp_path / "ws"))
    assert done.returncode == 2
    assert "meta.json" in done.stderr
    assert not (tmp_path / "ws").exists()  # nothing provisioned, nothing started


def test_a_job_that_does_not_finish_in_time_is_aborted_and_the_exit_names_it(tmp_path):
    done = _simulate(str(_hanging_job(tmp_path)), "-w", str(tmp_path / "ws"), "--timeout", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FINISHED:ABORTED" in done.stdout
    assert "did not finish within 3 s" in done.stdout
    assert "stopped the sites and the server" in done.stdout


def test_simulate_hello_numpy_with_two_sites_completes(tmp_path):
    done = _simulate(str(HELLO), "-n", "2", "-w", str(tmp_path / "ws"))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "FINISHED:COMPLETED" in out
    result = Path(re.search(r"^result\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    assert result.is_dir() and result.parent == tmp_path / "ws" / "results"
    model = result / "global_model.npz"
    with np.load(model, allow_pickle=False) as npz:
        assert len(npz.files) >= 1
    for rnd in (1, 2, 3):  # every round shows up in the per-round table
        assert re.search(rf"^\S*\s*{rnd}\s.*site-1", out, re.M), out


def test_the_demo_runs_the_whole_story_in_process(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["-w", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    assert "FINISHED:COMPLETED" in out
    assert "per-round metrics" in out
    assert str(tmp_path / "ws" / "results") in out.replace("\n", "")


def test_a_failing_job_exits_1_naming_its_status_and_reason(tmp_path):
    job = tmp_path / "crash"
    shutil.copytree(HELLO, job)
    (job / "app" / "custom" / "train.py").write_text(
        "import flare_site.client as flare\nflare.init()\nflare.receive()\n"
        "raise SystemExit('bad data [red]on this site[/red]')\n"
    )
    done = _simulate(str(job), "-w", str(tmp_path / "ws"))
    assert done.returncode == 1, done.stdout + done.stderr
    ended = [line for line in done.stdout.splitlines() if line.startswith("job ")][-1]
    assert "ended FINISHED:EXECUTION_EXCEPTION: " in ended
    assert "failed on site-" in ended  # the reason names the site
    assert "bad data [red]on this site[/red]" in done.stdout  # user text is not markup


def test_ctrl_c_stops_the_simulation_and_every_process(tmp_path):

    ws = tmp_path / "ws"
    out = tmp_path / "out.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flare_cli.main",
            "simulate",
            str(_hanging_job(tmp_path)),
            "-w",
            str(ws),
        ],
        stdout=open(out, "wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,  # noqa: SIM115
    )
    deadline = time.monotonic() + 60
    while sum("train.py" in cmd for cmd in _processes_in(ws)) < 2:  # both scripts run
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)
    ready = json.loads((ws / "logs" / "server.ready.json").read_text())
    pids = [ready["pid"]] + [
        int((ws / "poc" / "prod_00" / s / "workspace" / "site.lock").read_text())
        for s in ("site-1", "site-2")
    ]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    for pid in pids:
        deadline = time.monotonic() + 5
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"pid {pid} outlived flare simulate"
            time.sleep(0.05)
    assert _processes_in(ws) == []  # the job's training scripts are gone too


def _processes_in(folder: Path) -> list[str]:
    """Command lines of live processes whose working directory is inside ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(folder)):
            found.append(cmd)
    return found
