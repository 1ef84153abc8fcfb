"""Metric writers end to end: WandBWriter and MLflowWriter records from real sites come
back through the Session, and export_metrics writes TensorBoard event files that
TensorBoard's own event reader reads back (and MLflow runs, when mlflow is installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from flare_job import FedAvgJob, ScriptRunner
from flare_protocol.errors import InvalidArgumentError, MissingDependency
from tests.e2e.jobs_helpers import SITES, Cluster

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "job-api-numpy"
INITIAL = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
ROUNDS = 2


@pytest.fixture(scope="module")
def finished(provisioned, tmp_path_factory):
    """A cluster and a job of examples/job-api-numpy/train_metrics.py that completed."""
    with Cluster(provisioned, tmp_path_factory.mktemp("tracking")) as cluster:
        job = FedAvgJob(
            "tracking",
            n_clients=2,
            num_rounds=ROUNDS,
            initial_model={"numpy_key": INITIAL},
            validate_every_round=True,
        )
        job.to_clients(
            ScriptRunner(EXAMPLE / "train_metrics.py", files=[EXAMPLE / "train_full.py"])
        )
        job_id = cluster.session.submit_job(job)
        assert cluster.wait_done(job_id)["status"] == "FINISHED:COMPLETED"
        yield cluster, job_id


def _sent_mean(site: str, rnd: int) -> float:
    """The mean weight site-N sends in round r: the global mean (5, + 5/3 per round) + N."""
    return float(np.mean(INITIAL)) + 5 / 3 * (rnd - 1) + int(site[-1])


def test_mlflow_and_wandb_numbers_come_back_through_get_job_metrics(finished):
    cluster, job_id = finished
    rows = cluster.session.get_job_metrics(job_id)
    assert {r.key for r in rows} == {"mean_weight", "max_weight", "loss", "weights/min"}
    for site in SITES:
        mine = {(r.key, r.round): r for r in rows if r.site == site}
        assert set(mine) == {
            (key, rnd)
            for key in ("mean_weight", "max_weight", "loss", "weights/min")
            for rnd in range(1, ROUNDS + 1)
        }
        for rnd in range(1, ROUNDS + 1):
            assert mine["mean_weight", rnd].step == rnd
            assert mine["mean_weight", rnd].value == pytest.approx(_sent_mean(site, rnd), 1e-5)
            assert mine["loss", rnd].value == pytest.approx(1 / rnd)  # WandBWriter.log
    assert all(isinstance(r.value, float) for r in rows)  # strings never reach the metrics log


def test_params_tags_and_texts_come_back_through_get_job_params(finished):
    cluster, job_id = finished
    session = cluster.session
    params = session.get_job_params(job_id, kind="param")
    assert {(p.site, p.key, p.value) for p in params} == {
        ("site-1", "step_size", "1"),
        ("site-2", "step_size", "2"),
        ("site-1", "optimizer", "mock"),
        ("site-2", "optimizer", "mock"),
    }
    tags = session.get_job_params(job_id, site="site-2", kind="tag")
    assert {t.key: t.value for t in tags} == {"site": "site-2", "example": "job-api-numpy"}
    texts = session.get_job_params(job_id, site="site-1", kind="text")
    by_key = {(t.key, t.round): t for t in texts}
    assert by_key["notes/round_2.txt", 2].value.startswith("round 2: mean ")
    assert by_key["phase", 1].value == "train" and by_key["phase", 1].step == 1  # a WandB string
    everything = session.get_job_params(job_id)
    assert session.get_job_params(job_id, start=3) == everything[3:]
    assert {p.kind for p in everything} == {"param", "tag", "text"}
    with pytest.raises(InvalidArgumentError, match="kind must be one of"):
        session.get_job_params(job_id, kind="metric")


def test_the_tensorboard_export_reads_back_with_tensorboards_own_event_reader(finished, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    cluster, job_id = finished
    session = cluster.session
    logdir = tmp_path / "tb"
    assert session.export_metrics(job_id, logdir) == str(logdir)
    session.export_metrics(job_id, logdir)  # a second export replaces the first
    assert sorted(p.name for p in logdir.iterdir()) == list(SITES)
    metrics = session.get_job_metrics(job_id)
    validations = session.get_validations(job_id)
    for site in SITES:
        events = EventAccumulator(str(logdir / site), size_guidance={SCALARS: 0, TENSORS: 0})
        events.Reload()
        tags = events.Tags()
        assert set(tags["scalars"]) == {
            "mean_weight",
            "max_weight",
            "loss",
            "weights/min",
            "validation/mean_weight",
        }
        for key in ("mean_weight", "loss"):
            expected = sorted((r.step, r.value) for r in metrics if r.site == site and r.key == key)
            _same_points(events.Scalars(key), expected)
        checks = sorted((v.round, v.metrics["mean_weight"]) for v in validations if v.site == site)
        assert len(checks) == ROUNDS
        _same_points(events.Scalars("validation/mean_weight"), checks)
        assert "param/step_size/text_summary" in tags["tensors"]
        (text,) = events.Tensors("param/step_size/text_summary")
        assert text.tensor_proto.string_val == [site[-1].encode()]


def _same_points(scalars, expected) -> None:
    assert [e.step for e in scalars] == [step for step, _ in expected]
    assert [e.value for e in scalars] == pytest.approx([value for _, value in expected])


@pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy") is None,
    reason="mlflow (with its sqlalchemy store) is not installed: the MLflow export is optional",
)
def test_the_mlflow_export_logs_one_run_per_site(finished, tmp_path):
    import mlflow

    cluster, job_id = finished
    uri = cluster.session.export_metrics(job_id, tmp_path / "mlruns", format="mlflow")
    assert uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if job_id in e.name]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == list(SITES)
    for run in runs:
        site = run.info.run_name
        assert run.data.params == {"step_size": site[-1], "optimizer": "mock"}
        assert run.data.tags["site"] == site
        notes = {a.path for a in client.list_artifacts(run.info.run_id, "notes")}
        assert notes == {f"notes/round_{r}.txt" for r in range(1, ROUNDS + 1)}
        history = sorted(
            client.get_metric_history(run.info.run_id, "mean_weight"), key=lambda m: m.step
        )
        _same_points(history, [(r, _sent_mean(site, r)) for r in range(1, ROUNDS + 1)])


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_without_mlflow_the_mlflow_export_names_what_to_install(finished, tmp_path):
    cluster, job_id = finished
    with pytest.raises(MissingDependency, match="pip install mlflow"):
        cluster.session.export_metrics(job_id, tmp_path, format="mlflow")
    with pytest.raises(InvalidArgumentError, match="format must be one of tensorboard, mlflow"):
        cluster.session.export_metrics(job_id, tmp_path, format="csv")


async def test_the_async_session_reads_and_exports_the_same(finished, provisioned, tmp_path):
    from flare_admin import new_secure_async_session
    from tests.e2e.jobs_helpers import ADMIN

    cluster, job_id = finished
    address = cluster.server.admin_address
    async with await new_secure_async_session(
        ADMIN, provisioned.kits[ADMIN], server_address=address
    ) as s:
        assert await s.get_job_params(job_id, kind="tag") == cluster.session.get_job_params(
            job_id, kind="tag"
        )
        assert await s.export_metrics(job_id, tmp_path / "tb") == str(tmp_path / "tb")
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == list(SITES)
