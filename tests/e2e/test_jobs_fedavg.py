"""FedAvg and FedOpt jobs really run: real server, two real site processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flare_protocol.models import load_params
from tests.e2e.jobs_helpers import SITES, Cluster, sent, write_job

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
