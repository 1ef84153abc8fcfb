"""The package executor runs scaleout.yaml entry points; python_env virtualenvs are built
once per specification, under a lock, and never used half-built."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest
from site_helpers import write

from flare_protocol.app_config import folder_reader, load_site_config
from flare_protocol.compute_package import PackageExecutorConfig, PythonEnvSpec
from flare_protocol.errors import ExecutionError
from flare_protocol.models import load_params
from flare_site.executors import (
    JobContext,
    PackageExecutor,
    TaskSpec,
    TrainOutcome,
    ValidateOutcome,
)
from flare_site.executors.python_env import MARKER, PythonEnvs

SCALEOUT = """
entry_points:
  startup:
    command: python data.py
  train:
    command: python train.py --lr 0.5
  validate:
    command: python validate.py
"""
# Scaleout's conventions, written with numpy alone: numpyhelper's compressed .npz with
# members "0", "1" ..., save_metadata's "<model_out>-metadata", save_metrics' JSON.
DATA = """
import numpy as np
np.save("data.npy", np.arange(4.0))
"""
TRAIN = """
import json, sys
import numpy as np
model_in, model_out = sys.argv[-2:]
with np.load(model_in) as m:
    w = [m[str(i)] for i in range(len(m.files))]
x = np.load("data.npy")
np.savez_compressed(model_out, **{str(i): a + x.sum() for i, a in enumerate(w)})
with open(model_out + "-metadata", "w") as fh:
    json.dump({"num_examples": 12, "lr": float(sys.argv[2]), "epochs": 1}, fh)
"""
VALIDATE = """
import json, sys
import numpy as np
with np.load(sys.argv[1]) as m:
    total = float(sum(m[k].sum() for k in m.files))
json.dump({"total": total}, open(sys.argv[2], "w"))
"""


def _package(ctx: JobContext, scaleout: str = SCALEOUT, **scripts: str) -> PackageExecutorConfig:
    files = {"data.py": DATA, "train.py": TRAIN, "validate.py": VALIDATE, **scripts}
    write(ctx.app_dir / "scaleout.yaml", scaleout)
    for name, text in files.items():
        write(ctx.app_dir / name, text)
    config = load_site_config(folder_reader(ctx.app_dir), app_name="app")
    assert isinstance(config, PackageExecutorConfig)
    return config


def _seed(ctx: JobContext) -> Path:
    ctx.workspace.mkdir(parents=True, exist_ok=True)
    path = ctx.workspace / "seed.npz"
    np.savez_compressed(path, **{"0": np.ones(3), "1": np.zeros(())})
    return path


async def test_entry_points_run_with_scaleouts_arguments_and_metadata_file(ctx: JobContext):
    host = PackageExecutor(_package(ctx), ctx)
    await host.start()
    try:
        assert (ctx.app_dir / "data.npy").is_file()  # startup ran, in the app folder
        task = TaskSpec("t1", "train", 1, 3, _seed(ctx))
        outcome = await host.run_task(task)
        assert isinstance(outcome, TrainOutcome)
        assert outcome.num_examples == 12 and outcome.meta["lr"] == 0.5
        assert outcome.params_path.name == "t1.npz"
        update = load_params(outcome.params_path)
        np.testing.assert_array_equal(update["0"], np.ones(3) + 6)
        checked = await host.run_task(TaskSpec("v1", "validate", 1, 3, outcome.params_path))
        assert isinstance(checked, ValidateOutcome)
        assert checked.metrics == {"total": 3 * 7.0 + 6}
    finally:
        await host.stop()


async def test_a_train_entry_point_without_metadata_fails_naming_the_file(ctx: JobContext):
    no_metadata = TRAIN.replace('open(model_out + "-metadata", "w")', 'open("elsewhere", "w")')
    host = PackageExecutor(_package(ctx, **{"train.py": no_metadata}), ctx)
    await host.start()
    try:
        with pytest.raises(ExecutionError, match=r"t2\.npz-metadata was not written"):
            await host.run_task(TaskSpec("t2", "train", 1, 1, _seed(ctx)))
    finally:
        await host.stop()


def _spec(*deps: str) -> PythonEnvSpec:
    return PythonEnvSpec(name="t", dependencies=deps)


def test_the_key_is_the_content_hash_of_what_makes_the_environment(tmp_path: Path):
    envs = PythonEnvs(tmp_path)
    assert envs.key(_spec("numpy")) == envs.key(
        PythonEnvSpec(name="other", dependencies=("numpy",))
    )
    assert envs.key(_spec("numpy")) != envs.key(_spec("numpy==2.0"))
    shared = PythonEnvs(tmp_path, system_site_packages=True)
    assert shared.key(_spec("numpy")) != envs.key(_spec("numpy"))


async def test_without_builds_a_missing_or_half_built_environment_fails_at_once(tmp_path: Path):
    envs = PythonEnvs(tmp_path, allow_builds=False)
    half = envs.path_of(_spec("fedn"))
    (half / "bin").mkdir(parents=True)  # a build that was killed: no marker
    with pytest.raises(ExecutionError, match="python_env_builds is false") as info:
        await envs.ensure(_spec("fedn"))
    assert str(half) in str(info.value)
    assert not (half / MARKER).exists()


async def test_one_build_serves_concurrent_jobs_and_other_processes(tmp_path: Path):
    """Two jobs of one site and a second site process sharing the folder want the same
    environment while a killed build's leftovers are in its place: it is built once."""
    site_a, site_b = PythonEnvs(tmp_path), PythonEnvs(tmp_path)  # each locks on its own
    spec = _spec()
    leftover = site_a.path_of(spec)
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("from a killed build")
    lines: list[str] = []

    def out(stream: str, line: str) -> None:
        lines.append(line)

    results = await asyncio.gather(
        site_a.ensure(spec, on_output=out),
        site_a.ensure(spec, on_output=out),
        site_b.ensure(spec, on_output=out),
    )
    assert {env.path for env in results} == {leftover}
    assert sum(line.startswith("building environment") for line in lines) == 1, lines
    assert sum("removing the unfinished environment" in line for line in lines) == 1
    # the site's two jobs awaited its one build; the other process reused it
    assert [env.reused for env in results] == [False, False, True]
    assert (leftover / MARKER).is_file() and not (leftover / "junk").exists()
    assert json.loads((leftover / MARKER).read_text())["key"] == site_a.key(spec)
    assert (leftover / "bin" / "python").exists()
    again = await PythonEnvs(tmp_path).ensure(spec)
    assert again.reused and again.path == leftover


async def test_an_abort_while_another_process_builds_stops_the_wait(
    ctx: JobContext, tmp_path: Path
):
    envs = PythonEnvs(tmp_path / "envs")
    write(ctx.app_dir / "python_env.yaml", "dependencies: [fedn]\n")
    config = _package(ctx, "python_env: python_env.yaml\n" + SCALEOUT)
    assert config.python_env is not None
    (tmp_path / "envs").mkdir()
    lock = os.open(
        tmp_path / "envs" / f"{envs.path_of(config.python_env).name}.lock", os.O_RDWR | os.O_CREAT
    )
    fcntl.flock(lock, fcntl.LOCK_EX)  # another site process is building it
    lines: list[str] = []
    host = PackageExecutor(
        config, ctx, python_envs=envs, on_output=lambda _stream, line: lines.append(line)
    )
    try:
        starting = asyncio.ensure_future(host.start())
        for _ in range(100):
            if any("waiting" in line for line in lines):
                break
            await asyncio.sleep(0.05)
        await host.abort()
        with pytest.raises(ExecutionError, match="aborted while the environment") as info:
            await starting
        assert info.value.details["aborted"] is True
        await envs.close()  # the site stops: the build that waited is dropped
        assert not envs.path_of(config.python_env).exists()
    finally:
        os.close(lock)
