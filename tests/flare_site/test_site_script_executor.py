"""The script executor runs a real Client API script in a subprocess."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest
from site_helpers import pid_alive, wait_gone, write

from flare_protocol.app_config import ScriptExecutorConfig
from flare_protocol.errors import ExecutionError
from flare_protocol.models import ParamsType, load_params, save_params
from flare_site.executors import (
    JobContext,
    MetricEvent,
    ScriptExecutor,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
)

TRAINER = """
import os
import numpy as np
import flare_site.client as flare

flare.init()
writer = flare.SummaryWriter()
while flare.is_running():
    model = flare.receive()
    if flare.is_evaluate():
        flare.send(flare.FLModel(metrics={"mse": float(model.params["w"].sum())}))
        continue
    new = {k: v + 1 for k, v in model.params.items()} if model.params else {"w": np.ones(3)}
    flare.log_metric("loss", 0.5, step=model.current_round)
    writer.add_scalars("acc", {"train": 0.9}, global_step=1)
    ptype = os.environ.get("PTYPE", "FULL")
    out = {k: np.ones_like(v) for k, v in new.items()} if ptype == "DIFF" else new
    flare.send(flare.FLModel(params=out, params_type=ptype, metrics={"n": 5.0},
                             meta={"num_examples": 5, "site": flare.get_site_name()}))
"""


def _model(ctx: JobContext, name: str = "global.npz", value: float = 0.0) -> Path:
    ctx.workspace.mkdir(parents=True, exist_ok=True)
    return save_params({"w": np.full(3, value)}, ctx.workspace / name)


def _task(kind: str, rnd: int, model: Path | None) -> TaskSpec:
    return TaskSpec(f"r{rnd}-{kind}", kind, rnd, 2, model)


async def test_a_script_trains_a_round_and_streams_metrics(ctx: JobContext) -> None:
    write(ctx.app_dir / "custom/train.py", TRAINER)
    metrics: list[MetricEvent] = []
    host = ScriptExecutor(
        ScriptExecutorConfig(script="custom/train.py"), ctx, on_metric=metrics.append
    )
    await host.start()
    outcome = await host.run_task(_task("train", 1, _model(ctx, value=2.0)))
    assert isinstance(outcome, TrainOutcome)
    assert outcome.num_examples == 5 and outcome.params_type is ParamsType.FULL
    assert outcome.metrics == {"n": 5.0} and outcome.meta["site"] == "site-1"
    np.testing.assert_array_equal(load_params(outcome.params_path)["w"], np.full(3, 3.0))
    outcome2 = await host.run_task(_task("validate", 1, _model(ctx, "g1.npz", 1.0)))
    assert outcome2 == ValidateOutcome("r1-validate", {"mse": 3.0})
    pid = host.pids[0]
    await host.stop(grace=5)
    assert not pid_alive(pid)
    assert [(m.key, m.value, m.step, m.round) for m in metrics] == [
        ("loss", 0.5, 1, 1),
        ("acc/train", 0.9, 1, 1),
    ]


async def test_a_diff_update_and_a_first_round_without_a_model(ctx: JobContext) -> None:
    write(ctx.app_dir / "custom/train.py", TRAINER)
    host = ScriptExecutor(
        ScriptExecutorConfig(script="custom/train.py", env={"PTYPE": "DIFF"}), ctx
    )
    await host.start()
    try:
        outcome = await host.run_task(_task("train", 1, None))
        assert isinstance(outcome, TrainOutcome) and outcome.params_type is ParamsType.DIFF
        np.testing.assert_array_equal(load_params(outcome.params_path)["w"], np.ones(3))
    finally:
        await host.stop(grace=5)


async def test_a_crashing_script_fails_the_task_with_its_stderr_tail(ctx: JobContext) -> None:
    write(
        ctx.app_dir / "custom/train.py",
        """
        import flare_site.client as flare
        flare.init()
        model = flare.receive()
        raise RuntimeError(f"boom in round {model.current_round}")
        """,
    )
    host = ScriptExecutor(ScriptExecutorConfig(script="custom/train.py"), ctx)
    await host.start()
    with pytest.raises(ExecutionError) as info:
        await host.run_task(_task("train", 1, _model(ctx)))
    err = info.value
    assert err.returncode == 1
    assert "RuntimeError: boom in round 1" in err.stderr_tail
    assert "exited with code 1" in str(err) and "boom in round 1" in str(err)
    await host.stop(grace=1)


async def test_a_script_that_dies_before_init_fails_to_start(ctx: JobContext) -> None:
    write(ctx.app_dir / "custom/train.py", "import sys\nsys.exit('missing dataset /data/x')\n")
    host = ScriptExecutor(ScriptExecutorConfig(script="custom/train.py"), ctx)
    with pytest.raises(ExecutionError, match=r"(?s)before calling flare.init.*missing dataset"):
        await host.start()


async def test_a_result_without_num_examples_is_refused_in_the_script(ctx: JobContext) -> None:
    write(
        ctx.app_dir / "custom/train.py",
        """
        import flare_site.client as flare
        flare.init()
        model = flare.receive()
        flare.send(flare.FLModel(params=model.params))
        """,
    )
    host = ScriptExecutor(ScriptExecutorConfig(script="custom/train.py"), ctx)
    await host.start()
    with pytest.raises(ExecutionError, match="num_examples"):
        await host.run_task(_task("train", 1, _model(ctx)))
    await host.stop(grace=1)


async def test_a_script_that_exits_without_sending_fails_clearly(ctx: JobContext) -> None:
    write(
        ctx.app_dir / "custom/train.py",
        "import flare_site.client as flare\nflare.init()\nflare.receive()\n",
    )
    host = ScriptExecutor(ScriptExecutorConfig(script="custom/train.py"), ctx)
    await host.start()
    with pytest.raises(ExecutionError, match="exited with code 0 without sending a result"):
        await host.run_task(_task("train", 1, _model(ctx)))
    await host.stop(grace=1)


async def test_abort_kills_the_whole_process_group_within_seconds(ctx: JobContext) -> None:
    child_pid_file = ctx.workspace / "child.pid"
    write(
        ctx.app_dir / "custom/train.py",
        f"""
        import signal, subprocess, sys, time
        import flare_site.client as flare
        flare.init()
        model = flare.receive()
        # A child that ignores SIGTERM, as a stuck data loader might.
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        open({str(child_pid_file)!r}, "w").write(str(child.pid))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(120)
        """,
    )
    host = ScriptExecutor(ScriptExecutorConfig(script="custom/train.py"), ctx)
    await host.start()
    running = asyncio.ensure_future(host.run_task(_task("train", 1, _model(ctx))))
    for _ in range(200):
        if child_pid_file.exists() and child_pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    child = int(child_pid_file.read_text())
    leader = host.pids[0]
    assert pid_alive(child) and pid_alive(leader)
    started = time.monotonic()
    await host.abort()
    with pytest.raises(ExecutionError, match="aborted"):
        await running
    assert wait_gone([leader, child], timeout=15.0) == []
    assert time.monotonic() - started < 30  # not after the hung script (a generous ceiling)


async def test_user_code_gets_an_explicit_environment(ctx: JobContext) -> None:
    os.environ["FLARE_TEST_SITE_SECRET"] = "do-not-leak"
    try:
        write(
            ctx.app_dir / "custom/train.py",
            """
            import os, numpy as np
            import flare_site.client as flare
            flare.init()
            m = flare.receive()
            leaked = float("FLARE_TEST_SITE_SECRET" in os.environ)
            flare.send(flare.FLModel(params=m.params, metrics={
                "leaked": leaked, "mine": float(os.environ["MINE"]),
                "cwd_is_app": float(os.getcwd() == os.environ["FLARE_APP_DIR"])},
                meta={"num_examples": 1}))
            """,
        )
        host = ScriptExecutor(
            ScriptExecutorConfig(script="custom/train.py", env={"MINE": "7"}), ctx
        )
        await host.start()
        outcome = await host.run_task(_task("train", 1, _model(ctx)))
        await host.stop(grace=5)
    finally:
        del os.environ["FLARE_TEST_SITE_SECRET"]
    assert outcome.metrics == {"leaked": 0.0, "mine": 7.0, "cwd_is_app": 1.0}


async def test_a_cancelled_task_is_dropped_and_the_script_carries_on(ctx: JobContext) -> None:
    write(
        ctx.app_dir / "custom/train.py",
        """
        import time
        import flare_site.client as flare
        flare.init()
        while flare.is_running():
            model = flare.receive()
            if model.current_round == 1:
                time.sleep(0.5)  # slow enough for the site to give up on round 1
            flare.send(flare.FLModel(params=model.params, meta={"num_examples": 1},
                                     metrics={"round": float(model.current_round)}))
        """,
    )
    host = ScriptExecutor(ScriptExecutorConfig(script="custom/train.py"), ctx)
    await host.start()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(host.run_task(_task("train", 1, _model(ctx))), 0.1)
        outcome = await host.run_task(_task("train", 2, _model(ctx)))
        assert outcome.metrics == {"round": 2.0}
    finally:
        await host.stop(grace=5)


async def test_a_metric_from_another_thread_does_not_wait_for_the_next_task(
    ctx: JobContext,
) -> None:
    write(
        ctx.app_dir / "custom/train.py",
        """
        import threading, time
        import flare_site.client as flare
        flare.init()
        threading.Timer(0.1, lambda: flare.log_metric("gpu_temp", 61.0)).start()
        while flare.is_running():
            model = flare.receive()
            flare.send(flare.FLModel(params=model.params, meta={"num_examples": 1}))
        """,
    )
    seen: list[MetricEvent] = []
    host = ScriptExecutor(
        ScriptExecutorConfig(script="custom/train.py"), ctx, on_metric=seen.append
    )
    await host.start()
    try:
        for _ in range(100):  # no task handed out yet: the script sits in is_running()
            if seen:
                break
            await asyncio.sleep(0.05)
        assert [(m.key, m.value, m.round) for m in seen] == [("gpu_temp", 61.0, None)]
    finally:
        await host.stop(grace=5)


@pytest.mark.parametrize("cap", ["0", str(1 << 30)])
async def test_the_scripts_model_buffers_can_be_capped_and_rounds_stay_correct(
    ctx: JobContext, cap: str
) -> None:
    write(ctx.app_dir / "custom/train.py", TRAINER)
    config = ScriptExecutorConfig(script="custom/train.py", env={"FLARE_MODEL_BUFFER_BYTES": cap})
    host = ScriptExecutor(config, ctx)
    await host.start()
    for rnd in (1, 2, 3):  # later rounds reuse the buffers of earlier ones (unless capped)
        outcome = await host.run_task(_task("train", rnd, _model(ctx, f"g{rnd}.npz", rnd)))
        assert isinstance(outcome, TrainOutcome)
        np.testing.assert_array_equal(load_params(outcome.params_path)["w"], np.full(3, rnd + 1))
    await host.stop(grace=5)


async def test_a_bad_model_buffer_cap_stops_the_script_naming_the_variable(
    ctx: JobContext,
) -> None:
    write(ctx.app_dir / "custom/train.py", TRAINER)
    config = ScriptExecutorConfig(
        script="custom/train.py", env={"FLARE_MODEL_BUFFER_BYTES": "lots"}
    )
    host = ScriptExecutor(config, ctx)
    with pytest.raises(ExecutionError, match="FLARE_MODEL_BUFFER_BYTES must be a number"):
        await host.start()
