"""The Session's result readers against jobs that really ran: a local project (server and
two site processes from ``flare_local.poc``), ``examples/hello-numpy`` (3 rounds FedAvg,
validation every round, metrics streamed per epoch)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flare_admin import (
    AsyncSession,
    InvalidArgumentError,
    JobNotDone,
    JobNotFound,
    Session,
)
from flare_local.poc import ADMIN_NAME, LocalProject, provision_local

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"
SITES = ["site-1", "site-2"]


def _train_module() -> Any:
    spec = importlib.util.spec_from_file_location("hello_train", HELLO / "app/custom/train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProject]:
    kits = provision_local(tmp_path_factory.mktemp("poc"), SITES)
    with LocalProject(kits) as running:
        yield running


@pytest.fixture(scope="module")
def session(project: LocalProject) -> Iterator[Session]:
    with project.session(timeout=30) as s:
        yield s


@pytest.fixture(scope="module")
def finished_job(session: Session) -> str:
    job_id = session.submit_job(HELLO)
    meta = session.wait_for_job(job_id, timeout=120)
    assert meta.status == "FINISHED:COMPLETED", dict(meta)
    return job_id


@pytest.fixture(scope="module")
def result_dir(session: Session, finished_job: str, tmp_path_factory) -> Path:
    return Path(session.download_job_result(finished_job, tmp_path_factory.mktemp("result")))


def test_metrics_hold_every_sites_streamed_loss_for_every_round(session, finished_job):
    rows = session.get_job_metrics(finished_job)
    losses = [r for r in rows if r.key == "train_loss"]
    assert {r.site for r in losses} == set(SITES)
    assert {r.round for r in losses} == {1, 2, 3}
    epochs = 5  # examples/hello-numpy/app/config/config_fed_client.json: --epochs 5
    for site in SITES:
        steps = sorted(r.step for r in losses if r.site == site)
        assert steps == list(range(3 * epochs))
    assert all(np.isfinite(r.value) and r.time > 0 for r in losses)


def test_start_skips_rows_so_a_running_job_can_be_followed(session, finished_job):
    rows = session.get_job_metrics(finished_job)
    assert session.get_job_metrics(finished_job, start=5) == rows[5:]
    assert session.get_job_metrics(finished_job, start=len(rows)) == []
    site_rows = session.get_job_metrics(finished_job, site="site-1")
    assert session.get_job_metrics(finished_job, site="site-1", start=3) == site_rows[3:]
    vals = session.get_validations(finished_job)
    assert session.get_validations(finished_job, start=1) == vals[1:]


def test_metric_filters_by_site_and_key(session, finished_job):
    rows = session.get_job_metrics(finished_job, site="site-2", key="train_loss")
    assert rows and {(r.site, r.key) for r in rows} == {("site-2", "train_loss")}
    assert session.get_job_metrics(finished_job, key="no-such-key") == []


def test_validations_hold_each_sites_check_of_each_rounds_model(session, finished_job):
    rows = session.get_validations(finished_job)
    assert {(r.site, r.round) for r in rows} == {(s, r) for s in SITES for r in (1, 2, 3)}
    assert all("val_mse" in r.metrics for r in rows)
    assert session.get_validations(finished_job, site="site-1")[0].site == "site-1"


def test_validation_mse_matches_an_independent_evaluation_of_the_final_model(
    session, finished_job, tmp_path
):
    train = _train_module()
    model_path = session.download_model(finished_job, tmp_path)
    with np.load(model_path, allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files}
    last = {
        r.site: r.metrics["val_mse"] for r in session.get_validations(finished_job) if r.round == 3
    }
    for site in SITES:
        _, _, x_val, y_val = train.site_data(site)
        assert last[site] == pytest.approx(train.mse(params, x_val, y_val), rel=1e-9)


def test_download_model_gives_the_results_final_and_round_models(
    session, finished_job, result_dir, tmp_path
):
    final = Path(session.download_model(finished_job, tmp_path))
    assert final == tmp_path / f"{finished_job}.global_model.npz"
    assert final.read_bytes() == (result_dir / "global_model.npz").read_bytes()
    second = Path(session.download_model(finished_job, tmp_path / "r2.npz", round=2))
    assert second.read_bytes() == (result_dir / "models" / "round_002.npz").read_bytes()
    assert (
        hashlib.sha256(second.read_bytes()).digest() != hashlib.sha256(final.read_bytes()).digest()
    )


def test_download_model_lands_in_the_kits_transfer_folder_by_default(session, finished_job):
    path = Path(session.download_model(finished_job))
    assert path.parent == Path(session.startup_kit_location) / "transfer"
    assert path.name == f"{finished_job}.global_model.npz"


def test_a_round_that_does_not_exist_is_refused(session, finished_job):
    with pytest.raises(InvalidArgumentError):
        session.download_model(finished_job, round=99)


def test_the_summary_names_the_rounds_and_participants(session, finished_job):
    summary = session.get_job_summary(finished_job)
    text = str(summary)
    assert "fedavg" in text and "site-1" in text and "site-2" in text


def test_an_unknown_job_is_job_not_found(session):
    ghost = str(uuid.uuid4())
    with pytest.raises(JobNotFound):
        session.download_model(ghost)
    with pytest.raises(JobNotFound):
        session.get_job_metrics(ghost)
    with pytest.raises(JobNotFound):
        session.submit_job(HELLO, initial_model_job_id=ghost)


async def test_the_async_session_reads_the_same_rows(project, session, finished_job, tmp_path):
    async with await AsyncSession.open(
        ADMIN_NAME, project.kits.admin_kit, server_address=project.admin_address
    ) as s:
        assert await s.get_job_metrics(finished_job) == session.get_job_metrics(finished_job)
        assert await s.get_validations(finished_job) == session.get_validations(finished_job)
        path = await s.download_model(finished_job, tmp_path / "a.npz", round=1)
    assert Path(path).is_file()
    await asyncio.sleep(0)


def test_a_clone_continues_from_the_first_jobs_final_model(session, finished_job, tmp_path):
    train = _train_module()
    first = Path(session.download_model(finished_job, tmp_path / "first.npz"))
    with np.load(first, allow_pickle=False) as npz:
        start = {k: npz[k] for k in npz.files}
    clone = session.clone_job(finished_job, initial_model_job_id=finished_job)
    assert session.wait_for_job(clone, timeout=120).status == "FINISHED:COMPLETED"
    # round 1, step 0 of the clone: the loss of the model it started from, before training
    for site in SITES:
        step0 = [
            r
            for r in session.get_job_metrics(clone, site=site, key="train_loss")
            if r.round == 1 and r.step == 0
        ]
        x_train, y_train, _, _ = train.site_data(site)
        assert step0 and step0[0].value == pytest.approx(
            train.mse(start, x_train, y_train), rel=1e-9
        )


def test_submit_continues_from_a_model_too(session, finished_job, tmp_path):
    job = tmp_path / "one-round"
    shutil.copytree(HELLO, job)
    cfg = job / "app" / "config" / "config_fed_server.json"
    cfg.write_text(cfg.read_text().replace('"num_rounds": 3', '"num_rounds": 1'))
    job_id = session.submit_job(job, initial_model_job_id=finished_job)
    assert session.wait_for_job(job_id, timeout=120).status == "FINISHED:COMPLETED"
    first = session.get_job_metrics(finished_job, site="site-1", key="train_loss")
    cont = session.get_job_metrics(job_id, site="site-1", key="train_loss")
    start_first = next(r.value for r in first if r.round == 1 and r.step == 0)
    start_cont = next(r.value for r in cont if r.round == 1 and r.step == 0)
    assert start_cont < start_first  # it did not start from the job's own initial model


def test_the_final_model_of_an_unfinished_job_is_job_not_done(session, tmp_path):
    job = tmp_path / "hang"
    shutil.copytree(HELLO, job)
    (job / "app" / "custom" / "train.py").write_text(
        "import time\nimport flare_site.client as flare\nflare.init()\ntime.sleep(600)\n"
    )
    job_id = session.submit_job(job)
    try:
        with pytest.raises(JobNotDone):
            session.download_model(job_id)
        with pytest.raises(JobNotDone):
            session.clone_job(job_id, initial_model_job_id=job_id)
    finally:
        session.abort_job(job_id)
        session.wait_for_job(job_id, timeout=60)
