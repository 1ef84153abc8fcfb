"""The command executor runs Scaleout-style entry points as real subprocesses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from site_helpers import pid_alive, wait_gone, write

from flare_protocol.app_config import CommandExecutorConfig
from flare_protocol.errors import ExecutionError
from flare_protocol.models import ParamsType, load_params, save_params
from flare_site.executors import (
    CommandExecutor,
    JobContext,
    MetricEvent,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
)

ENTRY = """
import json, sys
import numpy as np
from flare_protocol.models import load_params, save_params

cmd = sys.argv[1]
if cmd == "startup":
    open("startup.done", "w").write("ok")
elif cmd == "train":
    model_in, model_out, metadata_out = sys.argv[2:5]
    params = load_params(model_in) or {"w": np.zeros(2)}
    import flare_site.client as flare
    flare.init()
    flare.log_metric("loss", 0.25, step=3)
    save_params({k: v + 2 for k, v in params.items()}, model_out)
    json.dump({"num_examples": 7, "params_type": "FULL", "metrics": {"acc": 0.5}},
              open(metadata_out, "w"))
elif cmd == "validate":
    model_in, metrics_out = sys.argv[2:4]
    json.dump({"mse": float(load_params(model_in)["w"].sum())}, open(metrics_out, "w"))
"""

CONFIG = CommandExecutorConfig(
    startup=("{python}", "custom/entry.py", "startup"),
    train=("{python}", "custom/entry.py", "train", "{model_in}", "{model_out}", "{metadata_out}"),
    validate=("{python}", "custom/entry.py", "validate", "{model_in}", "{metrics_out}"),
)


def _model(ctx: JobContext, value: float) -> Path:
    ctx.workspace.mkdir(parents=True, exist_ok=True)
    return save_params({"w": np.full(2, value)}, ctx.workspace / f"g{value}.npz")


async def test_startup_train_and_validate_run_as_commands(ctx: JobContext) -> None:
    write(ctx.app_dir / "custom/entry.py", ENTRY)
    metrics: list[MetricEvent] = []
    host = CommandExecutor(CONFIG, ctx, on_metric=metrics.append)
    await host.start()
    assert (ctx.app_dir / "startup.done").read_text() == "ok"
    outcome = await host.run_task(TaskSpec("t1", "train", 1, 3, _model(ctx, 1.0)))
    assert isinstance(outcome, TrainOutcome)
    assert (outcome.num_examples, outcome.params_type) == (7, ParamsType.FULL)
    assert outcome.metrics == {"acc": 0.5}
    np.testing.assert_array_equal(load_params(outcome.params_path)["w"], [3.0, 3.0])
    assert [(m.key, m.value, m.step) for m in metrics] == [("loss", 0.25, 3)]
    result = await host.run_task(TaskSpec("v1", "validate", 1, 3, _model(ctx, 2.0)))
    assert result == ValidateOutcome("v1", {"mse": 4.0})
    await host.stop()
    assert wait_gone(host.pids) == []


async def test_first_round_without_a_model_gets_an_empty_npz(ctx: JobContext) -> None:
    write(ctx.app_dir / "custom/entry.py", ENTRY)
    host = CommandExecutor(CONFIG, ctx)
    await host.start()
    outcome = await host.run_task(TaskSpec("t1", "train", 1, 1, None))
    assert isinstance(outcome, TrainOutcome)
    np.testing.assert_array_equal(load_params(outcome.params_path)["w"], [2.0, 2.0])
    await host.stop()


async def test_metadata_without_num_examples_fails_the_task(ctx: JobContext) -> None:
    write(
        ctx.app_dir / "custom/entry.py",
        """
        import json, sys, shutil
        shutil.copy(sys.argv[1], sys.argv[2])
        json.dump({"examples": 3}, open(sys.argv[3], "w"))
        """,
    )
    cfg = CommandExecutorConfig(
        train=("{python}", "custom/entry.py", "{model_in}", "{model_out}", "{metadata_out}")
    )
    host = CommandExecutor(cfg, ctx)
    await host.start()
    with pytest.raises(ExecutionError, match="needs an integer 'num_examples'"):
        await host.run_task(TaskSpec("t1", "train", 1, 1, _model(ctx, 0.0)))
    await host.stop()


async def test_a_pickled_model_out_is_refused(ctx: JobContext) -> None:
    write(
        ctx.app_dir / "custom/entry.py",
        """
        import json, sys
        import numpy as np
        np.savez(open(sys.argv[2], "wb"), w=np.array([{"x": 1}], dtype=object))
        json.dump({"num_examples": 3}, open(sys.argv[3], "w"))
        """,
    )
    cfg = CommandExecutorConfig(
        train=("{python}", "custom/entry.py", "{model_in}", "{model_out}", "{metadata_out}")
    )
    host = CommandExecutor(cfg, ctx)
    await host.start()
    with pytest.raises(ExecutionError, match="without pickle"):
        await host.run_task(TaskSpec("t1", "train", 1, 1, _model(ctx, 0.0)))
    await host.stop()


async def test_a_failing_command_reports_its_stderr_tail(ctx: JobContext) -> None:
    write(
        ctx.app_dir / "custom/entry.py",
        "import sys\nprint('loading data', flush=True)\nsys.exit('CUDA out of memory')\n",
    )
    cfg = CommandExecutorConfig(
        train=("{python}", "custom/entry.py", "{model_in}", "{model_out}", "{metadata_out}")
    )
    lines: list[tuple[str, str]] = []
    host = CommandExecutor(cfg, ctx, on_output=lambda s, line: lines.append((s, line)))
    await host.start()
    with pytest.raises(ExecutionError) as info:
        await host.run_task(TaskSpec("t1", "train", 1, 1, _model(ctx, 0.0)))
    assert info.value.returncode == 1 and info.value.stderr_tail == "CUDA out of memory"
    assert "train command (round 1) exited with code 1" in str(info.value)
    assert ("stdout", "loading data") in lines
    await host.stop()


async def test_a_failing_startup_fails_start(ctx: JobContext) -> None:
    cfg = CommandExecutorConfig(
        startup=("{python}", "-c", "import sys; sys.exit('no GPU')"),
        train=("{python}", "-c", "pass", "{model_out}", "{metadata_out}"),
    )
    host = CommandExecutor(cfg, ctx)
    with pytest.raises(ExecutionError, match="(?s)startup command exited with code 1.*no GPU"):
        await host.start()
    await host.abort()  # its owner ends it, as the JobManager does (its IPC folder goes)


async def test_a_missing_program_is_a_clear_error(ctx: JobContext) -> None:
    cfg = CommandExecutorConfig(train=("no-such-program-xyz", "{model_out}", "{metadata_out}"))
    host = CommandExecutor(cfg, ctx)
    await host.start()
    with pytest.raises(ExecutionError, match="cannot run the train command 'no-such-program-xyz'"):
        await host.run_task(TaskSpec("t1", "train", 1, 1, _model(ctx, 0.0)))
    await host.stop()


async def test_abort_kills_a_running_command_and_its_children(ctx: JobContext) -> None:
    pid_file = ctx.workspace / "child.pid"
    write(
        ctx.app_dir / "custom/entry.py",
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
        """,
    )
    cfg = CommandExecutorConfig(
        train=("{python}", "custom/entry.py", "{model_in}", "{model_out}", "{metadata_out}")
    )
    host = CommandExecutor(cfg, ctx)
    await host.start()
    running = asyncio.ensure_future(host.run_task(TaskSpec("t1", "train", 1, 1, _model(ctx, 0.0))))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    child = int(pid_file.read_text())
    assert pid_alive(child)
    await host.abort()
    with pytest.raises(ExecutionError, match="aborted"):
        await running
    assert wait_gone([*host.pids, child], timeout=3.0) == []


async def test_validate_without_a_validate_command_is_a_clear_error(ctx: JobContext) -> None:
    cfg = CommandExecutorConfig(train=("{python}", "-c", "pass", "{model_out}", "{metadata_out}"))
    host = CommandExecutor(cfg, ctx)
    await host.start()
    with pytest.raises(ExecutionError, match="no 'validate' command"):
        await host.run_task(TaskSpec("v1", "validate", 1, 1, _model(ctx, 0.0)))
    await host.stop()
    assert json.dumps(host.pids) == "[]"
