"""FedAvg and FedOpt jobs really run: real server, two real site processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flare_protocol.models import load_params
from tests.e2e.jobs_helpers import SITES, Cluster, sent, write_job
from tests.server_harness import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(provisioned, tmp_path_factory):
    with Cluster(provisioned, tmp_path_factory.mktemp("fedavg")) as c:
        yield c


def _fedavg(out: Path, rnd: int, global_model: dict[str, np.ndarray], diff: bool):
    total = 0
    acc = {k: np.zeros(v.shape, np.float64) for k, v in global_model.items()}
    for site in SITES:
        params, n = sent(out, site, rnd)
        for k in acc:
            full = global_model[k] + params[k] if diff else params[k]
            acc[k] += n * full.astype(np.float64)
        total += n
    return {k: (v / total).astype(global_model[k].dtype) for k, v in acc.items()}


@pytest.mark.parametrize("params_type", ["FULL", "DIFF"])
def test_a_fedavg_job_completes_with_the_weighted_mean_of_what_sites_sent(
    cluster, tmp_path, params_type
):
    out = tmp_path / "sends"
    job = write_job(tmp_path, out, params_type=params_type, rounds=2)
    job_id = cluster.submit(job)
    meta = cluster.wait_done(job_id)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    result = cluster.result_dir(job_id)
    model = load_params(job / "app" / "models" / "initial.npz")
    for rnd in (1, 2):
        model = _fedavg(out, rnd, model, params_type == "DIFF")
        got = load_params(result / "models" / f"round_{rnd:03d}.npz")
        for k in model:
            np.testing.assert_allclose(got[k], model[k], rtol=1e-6)
    final = load_params(result / "global_model.npz")
    for k in model:
        np.testing.assert_allclose(final[k], model[k], rtol=1e-6)


def _server_step(opt, global_model, mean, m, v, lr, b1, b2, tau):
    """One FedOpt step as in Reddi et al. (no bias correction, v starts at tau**2)."""
    new, m2, v2 = {}, {}, {}
    for k, g in global_model.items():
        delta = mean[k] - g.astype(np.float64)
        m2[k] = b1 * m.get(k, 0.0) + (1 - b1) * delta
        v_old = v.get(k, tau**2)
        if opt == "adam":
            v2[k] = b2 * v_old + (1 - b2) * delta**2
        elif opt == "adagrad":
            v2[k] = v_old + delta**2
        else:  # yogi
            v2[k] = v_old - (1 - b2) * delta**2 * np.sign(v_old - delta**2)
        new[k] = (g.astype(np.float64) + lr * m2[k] / (np.sqrt(v2[k]) + tau)).astype(g.dtype)
    return new, m2, v2


@pytest.mark.parametrize("opt", ["adam", "yogi", "adagrad"])
def test_a_fedopt_job_completes_with_the_independently_computed_model(cluster, tmp_path, opt):
    out = tmp_path / "sends"
    cfg = {"serveropt": opt, "learning_rate": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    job = write_job(tmp_path, out, workflow="fedopt", fedopt=cfg, rounds=2)
    job_id = cluster.submit(job)
    assert cluster.wait_done(job_id)["status"] == "FINISHED:COMPLETED"
    model = load_params(job / "app" / "models" / "initial.npz")
    m: dict = {}
    v: dict = {}
    for rnd in (1, 2):
        # the weighted mean in float64, not rounded to the model's dtype first
        total = sum(sent(out, s, rnd)[1] for s in SITES)
        mean = {
            k: sum(sent(out, s, rnd)[1] * sent(out, s, rnd)[0][k].astype(np.float64) for s in SITES)
            / total
            for k in model
        }
        model, m, v = _server_step(opt, model, mean, m, v, 0.1, 0.9, 0.99, 1e-3)
    final = load_params(cluster.result_dir(job_id) / "global_model.npz")
    for k in model:
        np.testing.assert_allclose(final[k], model[k], rtol=1e-5, atol=1e-6)


def test_a_command_executor_job_completes_with_validations(cluster, tmp_path):
    out = tmp_path / "sends"
    job = write_job(tmp_path, out, executor="command", rounds=2, validate=True)
    job_id = cluster.submit(job)
    assert cluster.wait_done(job_id)["status"] == "FINISHED:COMPLETED"
    model = load_params(job / "app" / "models" / "initial.npz")
    for rnd in (1, 2):
        model = _fedavg(out, rnd, model, False)
    final = load_params(cluster.result_dir(job_id) / "global_model.npz")
    for k in model:
        np.testing.assert_allclose(final[k], model[k], rtol=1e-6)
    rows = cluster.session.get_validations(job_id)
    assert sorted((r.site, r.round) for r in rows) == [
        ("site-1", 1),
        ("site-1", 2),
        ("site-2", 1),
        ("site-2", 2),
    ]
    round2 = load_params(cluster.result_dir(job_id) / "models" / "round_002.npz")
    expected = float(sum(a.sum() for a in round2.values()))
    assert all(r.metrics["sum"] == pytest.approx(expected, rel=1e-5) for r in rows if r.round == 2)


def test_metrics_validations_summary_logs_and_models_are_readable_after_the_job(cluster, tmp_path):
    out = tmp_path / "sends"
    job = write_job(tmp_path, out, rounds=2, validate=True)
    job_id = cluster.submit(job)
    assert cluster.wait_done(job_id)["status"] == "FINISHED:COMPLETED"
    s = cluster.session
    metrics = s.get_job_metrics(job_id)
    assert len(metrics) == 2 * 2 * 3  # sites x rounds x steps
    assert {(m.site, m.round) for m in metrics} == {(a, r) for a in SITES for r in (1, 2)}
    assert [m.value for m in s.get_job_metrics(job_id, site="site-1", key="loss")][:3] == [
        pytest.approx(1 / 2),
        pytest.approx(1 / 3),
        pytest.approx(1 / 4),
    ]
    validations = s.get_validations(job_id, site="site-2")
    assert [(v.round, v.metrics["round_seen"]) for v in validations] == [(1, 1.0), (2, 2.0)]
    path = s.download_model(job_id, tmp_path / "final.npz")
    final = load_params(cluster.result_dir(job_id) / "global_model.npz")
    got = load_params(path)
    assert all(np.array_equal(got[k], final[k]) for k in final)
    r1 = load_params(s.download_model(job_id, tmp_path / "r1.npz", round=1))
    assert set(r1) == set(final)
    result = cluster.result_dir(job_id)
    import json

    summary = json.loads((result / "summary.json").read_text())
    assert summary["status"] == "FINISHED:COMPLETED" and summary["rounds_completed"] == 2
    assert summary["rounds"][0]["participants"] == {"site-1": 30, "site-2": 70}
    for site in SITES:
        assert "ended" in (result / "logs" / f"{site}.log").read_text()
    assert "round 2 aggregated" in (result / "logs" / "server.log").read_text()
    assert (result / "metrics.jsonl").read_text().endswith('{"complete": true}\n')
    downloaded = Path(s.download_job_result(job_id, tmp_path))
    for name in (
        "global_model.npz",
        "models/round_001.npz",
        "models/round_002.npz",
        "metrics.jsonl",
        "validations.jsonl",
        "summary.json",
        "logs/server.log",
        "logs/site-1.log",
        "logs/site-2.log",
    ):
        assert (downloaded / name).read_bytes() == (result / name).read_bytes(), name
    wait_until(lambda: not any(cluster.site_job_pids(x) for x in SITES), 10)  # scripts exited


def test_a_job_continues_from_another_jobs_final_model(cluster, tmp_path):
    first = write_job(tmp_path / "a", tmp_path / "a-sends", rounds=1)
    first_id = cluster.submit(first)
    assert cluster.wait_done(first_id)["status"] == "FINISHED:COMPLETED"
    seed = load_params(cluster.result_dir(first_id) / "global_model.npz")
    out = tmp_path / "b-sends"
    second = write_job(tmp_path / "b", out, rounds=1)
    second_id = cluster.submit(second, initial_model_job_id=first_id)
    assert cluster.wait_done(second_id)["status"] == "FINISHED:COMPLETED"
    expected = _fedavg(out, 1, seed, False)
    final = load_params(cluster.result_dir(second_id) / "global_model.npz")
    for k in expected:
        np.testing.assert_allclose(final[k], expected[k], rtol=1e-6)
    clone_id = cluster.session.clone_job(second_id, initial_model_job_id=second_id)
    assert cluster.wait_done(clone_id)["status"] == "FINISHED:COMPLETED"
