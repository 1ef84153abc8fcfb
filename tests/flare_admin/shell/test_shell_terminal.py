"""The real ``flare admin`` in a pseudo-terminal, against a real server and real sites:
what a person does and sees."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.jobs_helpers import ADMIN, Cluster, write_job
from tests.flare_admin.shell.terminal import Terminal
from tests.kit_factory import copy_kit
from tests.server_harness import REPO, wait_until

TAB, ENTER, CTRL_C, CTRL_D = "\t", "\r", "\x03", "\x04"


@pytest.fixture
def cluster(provisioned: Any, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(provisioned, tmp_path / "cluster") as c:
        yield c


@pytest.fixture
def terminal(cluster: Cluster, provisioned: Any, tmp_path: Path) -> Iterator[Terminal]:
    kit = copy_kit(provisioned, ADMIN, tmp_path / "kits")
    argv = [sys.executable, "-m", "flare_cli.main", "admin", str(kit),
            "--server", cluster.server.admin_address]  # fmt: skip
    term = Terminal(argv, cwd=REPO, env=dict(os.environ))
    try:
        yield term
    finally:
        term.close()


def test_a_session_at_the_terminal(cluster: Cluster, terminal: Terminal, tmp_path: Path):
    term = terminal
    term.expect(r"signed in as admin@org_a\.com \(org org_a, role project_admin\)")
    term.expect(r"2 site\(s\) connected, 0 job\(s\) running")

    # submit a job, then find it again by Tab-completing the start of its id
    job = write_job(tmp_path, tmp_path / "out", name="at-the-terminal", rounds=3)
    term.send(f"submit_job {job}{ENTER}")
    job_id = term.expect(r"submitted job ([0-9a-f-]{36})").group(1)
    term.send(f"watch {job_id[:5]}{TAB}")
    term.expect(job_id)  # completed to the whole id
    term.send(ENTER)
    term.expect(r"at-the-terminal: FINISHED:COMPLETED \(round 3")

    term.send(f"metrics {job_id[:6]}{ENTER}")
    term.expect(r"ROUND")
    term.expect(r"site-1")

    # a job that hangs, aborted after saying yes
    hung = write_job(
        tmp_path / "h", tmp_path / "out-h", name="hangs", extra_args=("--hang-round", "1")
    )
    term.send(f"submit_job {hung}{ENTER}")
    hung_id = term.expect(r"submitted job ([0-9a-f-]{36})").group(1)
    wait_until(lambda: cluster.session.get_job_meta(hung_id).status == "RUNNING", 30)

    # Ctrl-C stops watching, not the job, and not the shell
    term.send(f"watch last{ENTER}")
    term.expect(r"hangs\s+" + hung_id[:8] + r"\s+RUNNING")
    term.send(CTRL_C)
    term.expect(r"stopped watching job " + hung_id[:8] + r": it is RUNNING and keeps running")

    term.send(f"abort_job last{ENTER}")
    term.expect(r"abort job " + hung_id[:8] + r" \(hangs, RUNNING\)\? \[y/N\]")
    term.send(f"y{ENTER}")
    term.expect(f"aborted job {hung_id}")

    term.expect(r"testproj>")  # typed ahead of the prompt, Ctrl-D would be the tty's EOF
    term.send(CTRL_D)
    term.expect(r"bye")
    assert term.wait() == 0
    assert cluster.wait_done(hung_id)["status"] == "FINISHED:ABORTED"
    assert "Traceback" not in term.screen
