"""The Job API end to end: the Client API example exports a folder that runs under
``flare simulate``, and ``simulator_run`` gives the same final model as that folder (and the
job object itself) run through a real server with real site processes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from flare_local import simulate
from flare_protocol.job_format import validate_job_folder
from flare_protocol.models import load_params
from tests.e2e.jobs_helpers import Cluster

pytestmark = pytest.mark.timeout(180)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "job-api-numpy"
ROUNDS = 3
INITIAL = np.arange(1, 10, dtype=np.float32).reshape(3, 3)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("job_api_example", EXAMPLE / "job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _closed_form(rounds: int) -> np.ndarray:
    """site-1 adds 1 with 10 examples, site-2 adds 2 with 20: each round adds 5/3."""
    model = INITIAL
    for _ in range(rounds):
        model = ((model + 1) * 10 + (model + 2) * 20) / 30
    return model.astype(np.float32)


def _final(result_dir: Path) -> np.ndarray:
    return load_params(result_dir / "global_model.npz")["numpy_key"]


def test_the_example_exports_a_folder_that_validates_and_runs_under_flare_simulate(tmp_path):
    example = _example()
    assert (
        example.main(
            ["--script", "train_full.py", "--export_config", "--job_root", str(tmp_path / "jobs")]
        )
        == 0
    )
    folder = tmp_path / "jobs" / "np_client_api"
    definition = validate_job_folder(folder)
    assert definition.meta["deploy_map"] == {"app": ["@ALL"]}

    workspace = tmp_path / "ws"
    assert simulate.main([str(folder), "-n", "2", "-w", str(workspace)]) == 0
    (result,) = (workspace / "results").iterdir()
    np.testing.assert_allclose(_final(result), _closed_form(ROUNDS), rtol=1e-6)


def test_simulator_run_gives_the_same_final_model_as_the_exported_folder_on_a_real_server(
    provisioned, tmp_path
):
    example = _example()
    job = example.build_job(example.define_parser().parse_args(["--script", "train_full.py"]))
    result = job.simulator_run(tmp_path / "sim", n_clients=2)
    assert result.completed, (result.status, result.reason)
    assert (
        result.result_dir is not None and result.result_dir.parent == tmp_path / "sim" / "results"
    )
    simulated = result.result_dir

    folder = Path(job.export_job(tmp_path / "jobs"))
    with Cluster(provisioned, tmp_path / "cluster") as cluster:
        from_folder = cluster.submit(folder)
        from_object = cluster.session.submit_job(job)  # exported to a temp folder, uploaded
        for job_id in (from_folder, from_object):
            assert cluster.wait_done(job_id)["status"] == "FINISHED:COMPLETED"
        on_server = [_final(cluster.result_dir(j)) for j in (from_folder, from_object)]

    expected = _final(simulated)
    np.testing.assert_allclose(expected, _closed_form(ROUNDS), rtol=1e-6)
    for model in on_server:
        np.testing.assert_array_equal(model, expected)
