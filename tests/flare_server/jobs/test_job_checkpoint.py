"""A running job's checkpoint on disk, and what a restarted server does with RUNNING jobs:
resume those it can, end the others FINISHED:ABNORMAL saying why (a real job store)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.errors import FlareError
from flare_protocol.models import dump_params
from flare_server.job_runner.checkpoint import (
    CHECKPOINT_DIR,
    STATE_FILE,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from flare_server.job_runner.resume import triage
from flare_server.jobs import JobStatus, JobStore, Submitter
from flare_server.results import round_model_name, write_atomic

MODEL = {"w": np.arange(4, dtype=np.float32)}


def _round_model(result: Path, number: int, model: dict[str, np.ndarray] = MODEL) -> str:
    data = dump_params(model)
    (result / "models").mkdir(parents=True, exist_ok=True)
    write_atomic(result / "models" / round_model_name(number), data)
    return hashlib.sha256(data).hexdigest()


def _checkpoint(
    job_dir: Path, number: int, sha: str | None, workflow: str = "fedavg"
) -> Checkpoint:
    return Checkpoint(
        job_id=job_dir.name,
        workflow=workflow,
        sites=("site-1", "site-2"),
        round=number,
        model_sha256=sha,
        lost={"site-3": "lost in round 1"},
        rounds=({"round": 1, "participants": {"site-1": 3}},),
        started=1.0,
        saved=2.0,
    )


def test_a_saved_checkpoint_loads_back_with_its_model_and_fedopt_state(tmp_path: Path) -> None:
    job_dir, result = tmp_path / "job-a", tmp_path / "job-a" / "result"
    sha = _round_model(result, 1)
    m, v = {"w": np.ones(4)}, {"w": np.full(4, 2.0)}
    save_checkpoint(job_dir, result, _checkpoint(job_dir, 1, sha), (m, v))
    loaded = load_checkpoint(job_dir, result)
    assert loaded.checkpoint.round == 1 and loaded.checkpoint.lost == {"site-3": "lost in round 1"}
    assert loaded.checkpoint.rounds == ({"round": 1, "participants": {"site-1": 3}},)
    assert loaded.model_npz == (result / "models" / "round_001.npz").read_bytes()
    assert loaded.optimizer is not None
    np.testing.assert_array_equal(loaded.optimizer[0]["w"], m["w"])
    np.testing.assert_array_equal(loaded.optimizer[1]["w"], v["w"])


def test_the_next_round_replaces_the_fedopt_state_and_a_resave_keeps_it(tmp_path: Path) -> None:
    job_dir, result = tmp_path / "job-b", tmp_path / "job-b" / "result"
    state = ({"w": np.ones(4)}, {"w": np.ones(4)})
    save_checkpoint(job_dir, result, _checkpoint(job_dir, 1, _round_model(result, 1)), state)
    second = _checkpoint(job_dir, 2, _round_model(result, 2))
    save_checkpoint(job_dir, result, second, state)
    names = sorted(p.name for p in (job_dir / CHECKPOINT_DIR).iterdir())
    assert names == ["fedopt_m_002.npz", "fedopt_v_002.npz", STATE_FILE]
    again = load_checkpoint(job_dir, result).checkpoint  # as the resumed run saves it again
    save_checkpoint(job_dir, result, again)
    assert load_checkpoint(job_dir, result).optimizer is not None


def test_a_round_zero_checkpoint_needs_no_model(tmp_path: Path) -> None:
    job_dir = tmp_path / "job-c"
    job_dir.mkdir()
    save_checkpoint(job_dir, job_dir / "result", _checkpoint(job_dir, 0, None))
    loaded = load_checkpoint(job_dir, job_dir / "result")
    assert loaded.checkpoint.round == 0 and loaded.model_npz is None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda job, res: (job / CHECKPOINT_DIR / STATE_FILE).unlink(), "no checkpoint was saved"),
        (lambda job, res: (job / CHECKPOINT_DIR / STATE_FILE).write_text("{"), "is not JSON"),
        (
            lambda job, res: (job / CHECKPOINT_DIR / STATE_FILE).write_text('{"version": 9}'),
            "has version 9; this server reads 1",
        ),
        (
            lambda job, res: _round_model(res, 1, {"w": np.zeros(4, dtype=np.float32)}),
            "round_001.npz does not match its checkpoint",
        ),
        (lambda job, res: (res / "models" / "round_001.npz").unlink(), "cannot read"),
    ],
    ids=["missing", "not-json", "other-version", "model-replaced", "model-missing"],
)
def test_a_checkpoint_that_cannot_be_trusted_is_refused_naming_why(
    tmp_path: Path, damage: Callable[[Path, Path], object], message: str
) -> None:
    job_dir, result = tmp_path / "job-d", tmp_path / "job-d" / "result"
    save_checkpoint(job_dir, result, _checkpoint(job_dir, 1, _round_model(result, 1)))
    damage(job_dir, result)
    with pytest.raises(FlareError, match=message):
        load_checkpoint(job_dir, result)


def test_a_restarted_server_resumes_only_the_jobs_it_can(
    tmp_path: Path,
    make_zip: Callable[..., Path],
    submitter: Submitter,
) -> None:
    root = tmp_path / "jobs"
    with JobStore.open(root) as store:
        ids = {}
        for kind in ("fedavg", "driver", "none", "damaged"):
            job_id = store.create_job_from_archive(make_zip(), submitter).job_id
            store.set_status(job_id, JobStatus.DISPATCHED)
            store.set_status(job_id, JobStatus.RUNNING)
            ids[kind] = job_id
            job_dir, result = store.job_dir(job_id), store.result_dir(job_id)
            if kind == "fedavg":
                save_checkpoint(job_dir, result, _checkpoint(job_dir, 1, _round_model(result, 1)))
            elif kind == "driver":
                save_checkpoint(job_dir, result, _checkpoint(job_dir, 0, None, "driver"))
            elif kind == "damaged":
                _round_model(result, 1)
                save_checkpoint(job_dir, result, _checkpoint(job_dir, 1, "0" * 64))
    # What a kill -9 leaves: the jobs RUNNING. The server opens its store keeping them.
    with JobStore.open(root, keep_running=True) as store:
        assert sorted(store.recovery.jobs_running) == sorted(ids.values())
        resumable, ended = triage(store, store.recovery.jobs_running)
        assert [job_id for job_id, _ in resumable] == [ids["fedavg"]]
        assert resumable[0][1].checkpoint.round == 1
        assert store.get(ids["fedavg"]).status is JobStatus.RUNNING
        assert sorted(ended) == sorted((ids[k], "RUNNING") for k in ("driver", "none", "damaged"))
        reasons = {
            kind: store.get(ids[kind]).status_history[-1]["reason"]
            for kind in ("driver", "none", "damaged")
        }
        for kind, reason in reasons.items():
            assert store.get(ids[kind]).status is JobStatus.FINISHED_ABNORMAL
            assert reason.startswith("server restarted while the job was RUNNING; "), kind
        assert "a driver job is not resumed" in reasons["driver"]
        assert "submit the job again" in reasons["driver"]
        assert "cannot be resumed: no checkpoint was saved" in reasons["none"]
        assert "does not match its checkpoint" in reasons["damaged"]


def test_the_checkpoint_is_json_a_person_can_read(tmp_path: Path) -> None:
    job_dir = tmp_path / "job-e"
    job_dir.mkdir()
    save_checkpoint(job_dir, job_dir / "result", _checkpoint(job_dir, 0, None))
    data = json.loads((job_dir / CHECKPOINT_DIR / STATE_FILE).read_text())
    assert data["version"] == 1 and data["round"] == 0 and data["sites"] == ["site-1", "site-2"]
    assert (job_dir / CHECKPOINT_DIR).stat().st_mode & 0o777 == 0o700
