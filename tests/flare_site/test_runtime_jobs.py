"""The site's job manager with real executors and real subprocesses (no network)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
import zipfile
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.errors import ExecutionError, InvalidJobDefinition
from flare_protocol.models import ParamsType, load_params, save_params
from flare_site.executors import MetricEvent, TrainOutcome, ValidateOutcome
from flare_site.jobs import ABORTED, FAILED, FINISHED, RUNNING, JobManager
from tests.flare_site.runtime_helpers import app_zip
from tests.flare_site.site_helpers import pid_alive, wait_gone

SCRIPT_CONFIG = {"executor": "script", "script": "custom/train.py"}

TRAINER = """
import os, sys, subprocess
import numpy as np
import flare_site.client as flare

flare.init()
print("trainer up", flush=True)
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    if flare.is_evaluate():
        flare.send(flare.FLModel(metrics={"acc": 0.75}))
        continue
    mode = os.environ.get("MODE", "")
    if mode == "crash":
        print("about to fail", file=sys.stderr, flush=True)
        raise SystemExit("boom: the training data is missing")
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["CHILD_PID_FILE"], "w") as fh:
            fh.write(str(child.pid))
        import time; time.sleep(600)
    flare.log_metric("loss", 0.25, step=model.current_round)
    params = {k: v + 1 for k, v in model.params.items()} if model.params else {"w": np.ones(2)}
    flare.send(flare.FLModel(params=params, params_type="FULL", meta={"num_examples": 7}))
print("trainer done", flush=True)
"""

SLOW_START = """
import time
time.sleep(600)
"""

COMMAND_TRAIN = """
import json, sys
import numpy as np
model_in, model_out, meta_out = sys.argv[1:4]
with np.load(model_in, allow_pickle=False) as data:
    params = {k: data[k] * 2 for k in data.files}
np.savez(model_out, **params)
json.dump({"num_examples": 3, "params_type": "FULL", "metrics": {"loss": 1.5}}, open(meta_out, "w"))
print("trained")
"""


def new_id() -> str:
    return str(uuid.uuid4())


def script_app(tmp_path: Path, code: str = TRAINER, **config: object) -> Path:
    path = tmp_path / f"app-{uuid.uuid4().hex[:6]}.zip"
    cfg = {**SCRIPT_CONFIG, **config}
    path.write_bytes(
        app_zip({"config/config_fed_client.json": json.dumps(cfg), "custom/train.py": code})
    )
    return path


def model(tmp_path: Path, value: float = 1.0) -> Path:
    return save_params({"w": np.full(2, value)}, tmp_path / f"g-{uuid.uuid4().hex[:6]}.npz")


@pytest.fixture
async def manager(tmp_path: Path):  # type: ignore[no-untyped-def]
    metrics: list[tuple[str, MetricEvent]] = []
    mgr = JobManager(
        tmp_path / "site-ws",
        "site-1",
        max_jobs=2,
        on_metric=lambda job, event: metrics.append((job, event)),
        stop_grace=30.0,  # far above the kill-at-once path (SIGKILL after 2 s)
    )
    mgr.metrics = metrics  # type: ignore[attr-defined]
    yield mgr
    await mgr.shutdown("test over")


async def test_a_deployed_script_trains_a_round_in_its_own_workspace(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    job = await manager.deploy(job_id, script_app(tmp_path), app="app", total_rounds=2)
    assert job.state == RUNNING and manager.running() == [job_id]
    assert job.folder == manager.workspace / "jobs" / job_id
    assert (job.app_dir / "custom" / "train.py").is_file()
    outcome = await manager.train(
        job_id, "t1", round=1, total_rounds=2, model_path=model(tmp_path, 1.0)
    )
    assert isinstance(outcome, TrainOutcome)
    assert outcome.num_examples == 7 and outcome.params_type is ParamsType.FULL
    assert outcome.params_path.is_relative_to(job.folder)
    np.testing.assert_array_equal(load_params(outcome.params_path)["w"], np.full(2, 2.0))
    assert [(j, m.key, m.value) for j, m in manager.metrics] == [(job_id, "loss", 0.25)]  # type: ignore[attr-defined]
    validation = await manager.validate(job_id, "v1", round=1, model_path=model(tmp_path))
    assert validation == ValidateOutcome("v1", {"acc": 0.75})


async def test_end_lets_the_script_finish_and_keeps_its_output_in_the_job_log(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    job = await manager.deploy(job_id, script_app(tmp_path))
    await manager.train(job_id, "t1", round=1, total_rounds=1, model_path=None)
    pid = job.executor.pids[0]  # type: ignore[union-attr]
    log_path = await manager.end(job_id, "FINISHED:COMPLETED")
    assert log_path == job.folder / "log.txt"
    assert manager.state(job_id) == FINISHED and manager.running() == []
    assert not pid_alive(pid)
    text = log_path.read_text()
    assert "[stdout] trainer up" in text
    assert "[stdout] trainer done" in text  # it left its loop: is_running() turned False
    assert "[site] train task t1 (round 1) done" in text


async def test_a_command_app_runs_its_train_entry_point(
    manager: JobManager, tmp_path: Path
) -> None:
    archive = tmp_path / "cmd.zip"
    cfg = {
        "executor": "command",
        "train": ["{python}", "custom/train.py", "{model_in}", "{model_out}", "{metadata_out}"],
    }
    archive.write_bytes(
        app_zip(
            {"config/config_fed_client.json": json.dumps(cfg), "custom/train.py": COMMAND_TRAIN}
        )
    )
    job_id = new_id()
    await manager.deploy(job_id, archive)
    outcome = await manager.train(
        job_id, "t1", round=1, total_rounds=1, model_path=model(tmp_path, 3.0)
    )
    assert outcome.num_examples == 3 and dict(outcome.metrics) == {"loss": 1.5}
    np.testing.assert_array_equal(load_params(outcome.params_path)["w"], np.full(2, 6.0))


async def test_the_client_config_sent_by_the_server_wins_over_the_apps_file(
    manager: JobManager, tmp_path: Path
) -> None:
    archive = script_app(tmp_path, script="custom/missing.py")
    job_id = new_id()
    await manager.deploy(job_id, archive, client_config=SCRIPT_CONFIG)
    assert manager.state(job_id) == RUNNING


async def test_a_crashing_script_fails_the_job_with_its_stderr_tail_in_the_site_log(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    job = await manager.deploy(job_id, script_app(tmp_path, env={"MODE": "crash"}))
    with pytest.raises(ExecutionError) as info:
        await manager.train(job_id, "t1", round=1, total_rounds=1, model_path=None)
    assert info.value.returncode == 1  # type: ignore[attr-defined]
    assert "boom: the training data is missing" in info.value.stderr_tail  # type: ignore[attr-defined]
    assert manager.state(job_id) == FAILED and manager.running() == []
    assert "boom" in job.stderr_tail
    text = job.log_path.read_text()
    assert "[stderr] about to fail" in text
    assert "[stderr] SystemExit: boom: the training data is missing" in text or "boom" in text
    assert [e["job_id"] for e in manager.errors] == [job_id]


async def test_abort_kills_the_whole_process_group_within_seconds(
    manager: JobManager, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    job_id = new_id()
    job = await manager.deploy(
        job_id, script_app(tmp_path, env={"MODE": "hang", "CHILD_PID_FILE": str(pid_file)})
    )
    train = asyncio.ensure_future(
        manager.train(job_id, "t1", round=1, total_rounds=1, model_path=None)
    )
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    pids = [job.executor.pids[0], int(pid_file.read_text())]  # type: ignore[union-attr]
    started = time.monotonic()
    assert await manager.abort(job_id, "stop it")
    elapsed = time.monotonic() - started
    with pytest.raises(ExecutionError):
        await train
    assert elapsed < 30  # not after the hung script (a generous ceiling)
    assert wait_gone(pids, 15.0) == []
    assert manager.state(job_id) == ABORTED and manager.running() == []


async def test_ending_a_job_whose_task_hangs_kills_its_group_and_frees_the_slot_at_once(
    manager: JobManager, tmp_path: Path
) -> None:
    """Issue 8 item 7: the end of a job does not wait for a script stuck in a task."""
    pid_file = tmp_path / "child.pid"
    job_id = new_id()
    job = await manager.deploy(
        job_id, script_app(tmp_path, env={"MODE": "hang", "CHILD_PID_FILE": str(pid_file)})
    )
    train = asyncio.ensure_future(
        manager.train(job_id, "t1", round=1, total_rounds=1, model_path=None)
    )
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    pids = [job.executor.pids[0], int(pid_file.read_text())]  # type: ignore[union-attr]
    ending = asyncio.ensure_future(manager.end(job_id, "FINISHED:ABNORMAL"))
    await asyncio.sleep(0)
    assert manager.running() == []  # the slot is free before the processes are gone
    started = time.monotonic()
    await ending
    assert time.monotonic() - started < manager.stop_grace  # not a graceful wait
    assert wait_gone(pids, 15.0) == []
    with pytest.raises(ExecutionError, match="the job ended"):
        await train
    assert manager.state(job_id) == FINISHED and manager.errors == deque()
    assert "stopping user code" in job.log_path.read_text()


@pytest.mark.parametrize("how", ["end", "abort"])
async def test_a_job_ended_before_its_deployment_arrived_is_never_started(
    manager: JobManager, tmp_path: Path, how: str
) -> None:
    job_id = new_id()
    if how == "end":
        assert await manager.end(job_id, "FINISHED:FAILED_TO_RUN") is None
    else:
        assert await manager.abort(job_id, "deployment failed elsewhere") is False
    with pytest.raises(ExecutionError, match="before it was deployed"):
        await manager.deploy(job_id, script_app(tmp_path))
    assert manager.running() == [] and manager.get(job_id) is None


async def test_ending_a_job_still_deploying_aborts_its_deployment(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    deploy = asyncio.ensure_future(
        manager.deploy(job_id, script_app(tmp_path, SLOW_START, launch_timeout=60))
    )
    deadline = time.monotonic() + 10
    while True:
        job = manager.get(job_id)
        if job is not None and job.executor is not None and job.executor.pids:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    pid = job.executor.pids[0]
    assert await manager.end(job_id, "FINISHED:FAILED_TO_RUN") == job.log_path
    with pytest.raises(ExecutionError):
        await deploy
    assert wait_gone([pid], 3.0) == []
    assert manager.state(job_id) == ABORTED and manager.running() == []


async def test_abort_during_deployment_never_leaves_user_code_running(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    deploy = asyncio.ensure_future(
        manager.deploy(job_id, script_app(tmp_path, SLOW_START, launch_timeout=60))
    )
    deadline = time.monotonic() + 10
    while True:
        job = manager.get(job_id)
        if job is not None and job.executor is not None and job.executor.pids:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    pid = job.executor.pids[0]
    assert await manager.abort(job_id, "changed my mind")
    with pytest.raises(ExecutionError):
        await deploy
    assert wait_gone([pid], 3.0) == []
    assert manager.state(job_id) == ABORTED


async def test_a_script_that_never_starts_fails_the_deployment(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    with pytest.raises(ExecutionError) as info:
        await manager.deploy(job_id, script_app(tmp_path, "raise SystemExit('no data here')\n"))
    assert "no data here" in info.value.stderr_tail  # type: ignore[attr-defined]
    assert manager.state(job_id) == FAILED


async def test_deployments_beyond_max_jobs_are_refused(manager: JobManager, tmp_path: Path) -> None:
    for _ in range(2):
        await manager.deploy(new_id(), script_app(tmp_path))
    with pytest.raises(ExecutionError, match="limit .* is 2"):
        await manager.deploy(new_id(), script_app(tmp_path))
    assert len(manager.running()) == 2


async def test_two_jobs_run_side_by_side_in_separate_workspaces(
    manager: JobManager, tmp_path: Path
) -> None:
    a, b = new_id(), new_id()
    await asyncio.gather(
        manager.deploy(a, script_app(tmp_path)), manager.deploy(b, script_app(tmp_path))
    )
    ra, rb = await asyncio.gather(
        manager.train(a, "t", round=1, total_rounds=1, model_path=model(tmp_path, 1.0)),
        manager.train(b, "t", round=1, total_rounds=1, model_path=model(tmp_path, 5.0)),
    )
    assert load_params(ra.params_path)["w"][0] == 2.0 and load_params(rb.params_path)["w"][0] == 6.0
    assert ra.params_path.parent != rb.params_path.parent


@pytest.mark.parametrize(
    "job_id", ["../../etc", "ABCDEF00-0000-0000-0000-000000000000", "x", "", "a/b"]
)
async def test_a_job_id_that_is_not_a_canonical_uuid_is_refused(
    manager: JobManager, tmp_path: Path, job_id: str
) -> None:
    with pytest.raises(ExecutionError, match="not a canonical UUID"):
        await manager.deploy(job_id, script_app(tmp_path))
    assert os.listdir(manager.jobs_dir) == []


def _zip_with(tmp_path: Path, name: str, attr: int | None = None) -> Path:
    path = tmp_path / f"evil-{uuid.uuid4().hex[:6]}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config/config_fed_client.json", json.dumps(SCRIPT_CONFIG))
        info = zipfile.ZipInfo(name)
        if attr is not None:
            info.external_attr = attr << 16
        zf.writestr(info, "payload")
    return path


@pytest.mark.parametrize(
    ("entry", "attr", "why"),
    [
        ("../escape.py", None, "'..'"),
        ("/etc/passwd", None, "absolute"),
        ("custom\\win.py", None, "backslash"),
        ("custom/link", 0o120777, "symlink"),
        ("custom/fifo", 0o010644, "FIFO"),
    ],
)
async def test_an_unsafe_app_archive_is_refused_before_anything_is_extracted(
    manager: JobManager, tmp_path: Path, entry: str, attr: int | None, why: str
) -> None:
    job_id = new_id()
    with pytest.raises(InvalidJobDefinition, match=why) as info:
        await manager.deploy(job_id, _zip_with(tmp_path, entry, attr))
    assert info.value.path == entry  # type: ignore[attr-defined]
    folder = manager.jobs_dir / job_id
    assert sorted(os.listdir(folder)) == ["downloads", "log.txt"]
    assert not (tmp_path / "escape.py").exists()
    assert manager.state(job_id) == FAILED


async def test_an_archive_that_inflates_beyond_its_declared_size_is_refused(
    tmp_path: Path,
) -> None:
    from flare_site.archive import AppLimits, extract_app

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config/config_fed_client.json", b"{}")
        zf.writestr("custom/big.bin", b"\0" * 2_000_000)
    with pytest.raises(InvalidJobDefinition, match="declares more than 1000000 uncompressed bytes"):
        extract_app(path, tmp_path / "out", AppLimits(max_uncompressed_bytes=1_000_000))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]


async def test_an_app_archive_with_one_top_folder_is_extracted_without_it(
    tmp_path: Path,
) -> None:
    from flare_site.archive import extract_app

    path = tmp_path / "app.zip"
    path.write_bytes(app_zip({"app/config/config_fed_client.json": "{}", "app/custom/t.py": ""}))
    assert extract_app(path, tmp_path / "out") == 2
    assert (tmp_path / "out" / "config" / "config_fed_client.json").is_file()
    assert (tmp_path / "out" / "custom" / "t.py").is_file()


async def test_the_job_log_is_capped(tmp_path: Path) -> None:
    from flare_site.jobs import JobLog

    log = JobLog(tmp_path / "log.txt", max_bytes=2000)
    for i in range(200):
        log.output("stdout", f"line {i:04d} " + "x" * 40)
    log.close()
    text = (tmp_path / "log.txt").read_text()
    assert len(text) < 2200
    assert text.count("log capped at 2000 bytes") == 1


async def test_a_task_for_a_job_that_is_not_running_here_is_refused(
    manager: JobManager,
) -> None:
    with pytest.raises(ExecutionError, match="not deployed"):
        await manager.train(new_id(), "t1", round=1, total_rounds=1, model_path=None)


async def test_what_a_site_killed_mid_deployment_left_is_replaced_when_the_job_comes_again(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    leftover = manager.workspace / "jobs" / job_id  # an earlier site process died extracting
    (leftover / "app" / "custom").mkdir(parents=True)
    (leftover / "app" / "custom" / "half-written.py").write_text("import nu")
    (leftover / "log.txt").write_text("2026-12-02T12:00:00Z [site] deploying app app of job\n")
    job = await manager.deploy(job_id, script_app(tmp_path), app="app")
    assert job.state == RUNNING
    assert not (job.app_dir / "custom" / "half-written.py").exists()
    assert "deploying app app" in job.log_path.read_text()


async def test_a_job_an_earlier_site_process_deployed_is_not_deployed_again(
    manager: JobManager, tmp_path: Path
) -> None:
    job_id = new_id()
    done = manager.workspace / "jobs" / job_id
    done.mkdir(parents=True)
    (done / "log.txt").write_text(
        "2026-12-02T12:00:00Z [site] deploying app app of job\n"
        "2026-12-02T12:00:01Z [site] deployed; executor ScriptExecutor started\n"
    )
    with pytest.raises(ExecutionError, match="already deployed on this site before"):
        await manager.deploy(job_id, script_app(tmp_path), app="app")
    assert (done / "log.txt").is_file()  # its folder is left as it was
