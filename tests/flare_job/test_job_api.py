"""The Job API builds job folders the server's own checks accept (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import flare_job
from flare_job import (
    CommandRunner,
    FedAvg,
    FedAvgJob,
    FedJob,
    FedOptJob,
    InitialModel,
    PackageRunner,
    ScriptRunner,
)
from flare_protocol.errors import (
    InvalidArgumentError,
    InvalidJobDefinition,
    InvalidModel,
    InvalidTarget,
)
from flare_protocol.job_format import META_KEYS, validate_job_folder
from flare_protocol.models import load_params

REPO = Path(__file__).resolve().parents[2]
MODEL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3)}


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "train.py"
    path.parent.mkdir()
    path.write_text("import flare_site.client as flare\nflare.init()\n")
    (tmp_path / "src" / "helpers.py").write_text("X = 1\n")
    return path


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_public_api_is_pinned():
    assert sorted(flare_job.__all__) == sorted(
        [
            "AppContent",
            "CommandRunner",
            "FedAvg",
            "FedAvgJob",
            "FedJob",
            "FedOpt",
            "FedOptJob",
            "InitialModel",
            "PackageRunner",
            "ScriptRunner",
            "SiteExecutor",
            "Workflow",
        ]
    )


def test_a_fedavg_job_exports_one_app_for_all_sites_that_the_server_checks_accept(tmp_path, script):
    job = FedAvgJob("hello", n_clients=2, num_rounds=3, initial_model=MODEL)
    job.to_clients(ScriptRunner(script, script_args="--lr 0.1 --name 'a b'"))
    folder = Path(job.export_job(tmp_path / "jobs"))

    assert folder == tmp_path / "jobs" / "hello"
    definition = validate_job_folder(folder)
    meta = _json(folder / "meta.json")
    assert set(meta) <= META_KEYS
    assert meta == {
        "name": "hello",
        "min_clients": 2,
        "deploy_map": {"app": ["@ALL"]},
        "resource_spec": {},
    }
    assert definition.apps == ("app",)
    assert _json(folder / "app/config/config_fed_server.json") == {
        "workflow": "fedavg",
        "num_rounds": 3,
        "initial_model": "models/initial_model.npz",
    }
    assert _json(folder / "app/config/config_fed_client.json") == {
        "executor": "script",
        "script": "custom/train.py",
        "args": ["--lr", "0.1", "--name", "a b"],
    }
    model = load_params(folder / "app/models/initial_model.npz")
    assert set(model) == set(MODEL)
    for key, value in MODEL.items():
        np.testing.assert_array_equal(model[key], value)
        assert model[key].dtype == value.dtype


def test_an_initial_model_file_is_copied_and_checked_on_export(tmp_path, script):
    from flare_protocol.models import save_params

    path = save_params(MODEL, tmp_path / "seed.npz")
    job = FedAvgJob("seeded", initial_model=str(path))
    job.to_clients(ScriptRunner(script))
    folder = Path(job.export_job(tmp_path / "out"))
    assert (folder / "app/models/initial_model.npz").read_bytes() == path.read_bytes()

    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    bad = FedAvgJob("bad-seed", initial_model=tmp_path / "bad.npz")
    bad.to_clients(ScriptRunner(script))
    with pytest.raises(InvalidJobDefinition, match="not a usable initial model"):
        bad.export_job(tmp_path / "out")
    assert not (tmp_path / "out" / "bad-seed").exists()


def test_a_fedopt_job_carries_the_server_optimiser(tmp_path, script):
    job = FedOptJob(
        "opt",
        2,
        4,
        serveropt="yogi",
        learning_rate=0.3,
        tau=1e-3,
        round_timeout=30,
        min_responses=1,
        validate_every_round=True,
    )
    job.to_clients(ScriptRunner(script))
    folder = Path(job.export_job(tmp_path))
    assert _json(folder / "app/config/config_fed_server.json") == {
        "workflow": "fedopt",
        "num_rounds": 4,
        "min_responses": 1,
        "round_timeout": 30,
        "validate_every_round": True,
        "fedopt": {
            "serveropt": "yogi",
            "learning_rate": 0.3,
            "beta1": 0.9,
            "beta2": 0.99,
            "tau": 0.001,
        },
    }
    bad = FedOptJob("bad-opt", serveropt="sgd")
    bad.to_clients(ScriptRunner(script))
    with pytest.raises(InvalidJobDefinition, match="serveropt"):
        bad.export_job(tmp_path)


def test_named_sites_get_their_own_apps_and_every_to_clients_resource(tmp_path, script):
    job = FedJob("per-site", min_clients=2)
    job.to_server(FedAvg(num_rounds=2))
    job.to_server(MODEL)
    job.to(ScriptRunner(script, "--site one"), "site-1")
    job.to(ScriptRunner(script, "--site two"), "site-2")
    job.to_clients(script.parent)  # a folder: its files go flat into custom/
    folder = Path(job.export_job(tmp_path))

    validate_job_folder(folder)
    assert _json(folder / "meta.json")["deploy_map"] == {
        "app_server": ["server"],
        "app_site-1": ["site-1"],
        "app_site-2": ["site-2"],
    }
    assert (folder / "app_server/models/initial_model.npz").is_file()
    assert not (folder / "app_server/custom").exists()  # no user code goes to the server
    for site, word in (("site-1", "one"), ("site-2", "two")):
        client = _json(folder / f"app_{site}/config/config_fed_client.json")
        assert client["args"] == ["--site", word]
        assert (folder / f"app_{site}/custom/helpers.py").read_text() == "X = 1\n"


def test_a_named_site_without_its_own_executor_runs_the_to_clients_one(tmp_path, script):
    job = FedAvgJob("fallback", num_rounds=1)
    job.to_clients(ScriptRunner(script))
    job.to(script.parent / "helpers.py", "site-3")
    folder = Path(job.export_job(tmp_path))
    assert _json(folder / "meta.json")["deploy_map"] == {
        "app_server": ["server"],
        "app_site-3": ["site-3"],
    }
    assert (folder / "app_site-3/custom/train.py").is_file()
    assert (folder / "app_site-3/custom/helpers.py").is_file()


def test_command_runner_and_package_runner_export_valid_apps(tmp_path, script):
    job = FedAvgJob("cmd", num_rounds=1, validate_every_round=True)
    job.to_clients(
        CommandRunner(
            train="{python} custom/train.py train {model_in} {model_out} {metadata_out}",
            validate=["{python}", "custom/train.py", "validate", "{model_in}", "{metrics_out}"],
            files=[script],
            env={"MODE": "fast"},
        )
    )
    folder = Path(job.export_job(tmp_path))
    client = _json(folder / "app/config/config_fed_client.json")
    assert client["train"] == [
        "{python}",
        "custom/train.py",
        "train",
        "{model_in}",
        "{model_out}",
        "{metadata_out}",
    ]
    assert client["env"] == {"MODE": "fast"}

    package = REPO / "examples" / "hello-numpy-command" / "app"
    job = FedAvgJob("pkg", num_rounds=2)
    job.to_clients(PackageRunner(package))
    folder = Path(job.export_job(tmp_path))
    validate_job_folder(folder)
    assert (folder / "app/config/config_fed_client.json").read_bytes() == (
        package / "config/config_fed_client.json"
    ).read_bytes()
    assert _json(folder / "app/config/config_fed_server.json") == {
        "workflow": "fedavg",
        "num_rounds": 2,
    }  # the package's own server config is left out
    with pytest.raises(InvalidJobDefinition, match="whole job folder"):
        PackageRunner(package.parent)


def test_package_runner_takes_a_scaleout_package_without_what_its_ignore_file_lists(tmp_path):
    from tests.compute_package import write_package

    package = write_package(tmp_path / "client")
    (package / "data").mkdir()
    (package / "data" / "split.npz").write_bytes(b"local data")
    (package / "package.tgz").write_bytes(b"an old package")
    job = FedAvgJob("scaleout", num_rounds=1, initial_model={"0": np.zeros(4)})
    job.to_clients(PackageRunner(package))
    folder = Path(job.export_job(tmp_path / "jobs"))
    validate_job_folder(folder)
    app = sorted(p.relative_to(folder / "app").as_posix() for p in (folder / "app").rglob("*"))
    assert "scaleout.yaml" in app and "python_env.yaml" in app
    assert not any(p.startswith("data/") or p.endswith(".tgz") for p in app), app


def test_a_job_missing_a_part_names_what_to_add(tmp_path, script):
    out = tmp_path / "out"
    no_executor = FedAvgJob("no-exec")
    with pytest.raises(InvalidJobDefinition, match=r"no executor: add one with job.to_clients"):
        no_executor.export_job(out)
    no_workflow = FedJob("no-workflow")
    no_workflow.to_clients(ScriptRunner(script))
    with pytest.raises(InvalidJobDefinition, match=r"no workflow: use FedAvgJob"):
        no_workflow.export_job(out)
    too_few = FedAvgJob("too-few", n_clients=3)
    too_few.to(ScriptRunner(script), "site-1")
    with pytest.raises(InvalidJobDefinition, match="min_clients' is 3 but deploy_map names only 1"):
        too_few.export_job(out)
    assert list(out.iterdir()) == []  # nothing half-written is left behind


def test_objects_sent_to_the_wrong_place_are_refused_naming_the_right_call(script):
    job = FedAvgJob("wrong")
    with pytest.raises(InvalidTarget, match="server runs no user code"):
        job.to_server(ScriptRunner(script))
    with pytest.raises(InvalidTarget, match=r"belongs to the server: use job.to_server"):
        job.to_clients(FedAvg(num_rounds=1))
    with pytest.raises(InvalidTarget, match="neither 'server' nor a site name"):
        job.to(ScriptRunner(script), "../site")
    with pytest.raises(InvalidArgumentError, match="already has a workflow"):
        job.to_server(FedAvg(num_rounds=2))
    job.to_clients(ScriptRunner(script))
    with pytest.raises(InvalidArgumentError, match="one executor per job"):
        job.to_clients(ScriptRunner(script))
    with pytest.raises(InvalidArgumentError, match="a site takes an executor"):
        job.to(42, "site-1")


def test_bad_arguments_are_refused_when_the_object_is_made(tmp_path, script):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        ScriptRunner(tmp_path / "missing.py")
    with pytest.raises(InvalidArgumentError, match="use CommandRunner"):
        ScriptRunner(script, command="torchrun --nproc 2")
    with pytest.raises(InvalidModel, match="NaN"):
        InitialModel({"w": np.array([np.nan])})
    with pytest.raises(InvalidArgumentError, match="job name"):
        FedJob("../escape")
    with pytest.raises(InvalidArgumentError, match="num_rounds"):
        FedAvgJob("zero", num_rounds=0)


def test_export_replaces_an_earlier_export_but_never_another_folder(tmp_path, script):
    job = FedAvgJob("again", num_rounds=1)
    job.to_clients(ScriptRunner(script))
    folder = Path(job.export_job(tmp_path))
    (folder / "stale.txt").write_text("from an earlier export")
    job.export_job(tmp_path)
    assert not (folder / "stale.txt").exists()

    other = FedAvgJob("precious", num_rounds=1)
    other.to_clients(ScriptRunner(script))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="not a job folder"):
        other.export_job(tmp_path)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "keep me"


def test_two_objects_wanting_one_path_with_different_content_are_refused(tmp_path, script):
    other = tmp_path / "elsewhere" / "train.py"
    other.parent.mkdir()
    other.write_text("print('another train.py')\n")
    job = FedAvgJob("clash", num_rounds=1)
    job.to_clients(ScriptRunner(script))
    job.to_clients(other)
    with pytest.raises(InvalidJobDefinition, match="different content at 'custom/train.py'"):
        job.export_job(tmp_path / "out")
