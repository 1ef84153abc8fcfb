"""Scaleout compute packages on a real server and real sites: scaleout.yaml, python_env.

The package (tests/compute_package.py) is written as Scaleout's examples are and imports
Scaleout's helper API, which only its python_env provides: a wheel the test makes, which
the sites install with ``pip --no-index --find-links`` (their ``python_env_pip_options``).
Both sites keep their environments in one folder (``python_env_dir``), so one environment
is built for the whole module, and the two site processes must take turns building it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.models import load_params
from flare_site.executors.python_env import MARKER
from flare_site.job_cli import main as job_main
from tests.compute_package import build_helpers_wheel, local_step, write_package
from tests.e2e.jobs_helpers import SITES, Cluster

pytestmark = pytest.mark.timeout(240)

SEED_W, SEED_B = np.linspace(-1.0, 1.0, 4), np.array([0.5])


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    build_helpers_wheel(folder)
    return folder


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="module")
def cluster(provisioned, tmp_path_factory, wheels: Path, envs: Path):
    settings = {
        "python_env_dir": str(envs),
        "python_env_pip_options": ["--no-index", "--find-links", str(wheels)],
        # numpy comes from the site's Python; the package's own dependency from the env
        "python_env_system_site_packages": True,
    }
    # deploying a package builds its environment (pip): minutes on a loaded machine
    with Cluster(
        provisioned, tmp_path_factory.mktemp("packages"), site_settings=settings, deploy_timeout=300
    ) as c:
        yield c


def _job(root: Path, name: str, *, rounds: int, targets: list[str] | None = None, **kw) -> Path:
    """A job folder whose one app is the compute package, with a Scaleout-made seed."""
    job = root / name
    app = write_package(job / "app", **kw)
    np.savez_compressed(app / "seed.npz", **{"0": SEED_W, "1": SEED_B})  # numpyhelper's layout
    (app / "config").mkdir()
    (app / "config" / "config_fed_server.json").write_text(
        json.dumps(
            {
                "workflow": "fedavg",
                "num_rounds": rounds,
                "initial_model": "seed.npz",
                "validate_every_round": True,
                "round_timeout": 60,
            }
        )
    )
    deploy = {"app": targets or ["@ALL"]}
    min_clients = len([t for t in deploy["app"] if t != "server"]) if targets else 2
    meta = {"name": name, "min_clients": min_clients, "deploy_map": deploy}
    (job / "meta.json").write_text(json.dumps(meta))
    return job


def _site_log(cluster: Cluster, job_id: str, site: str) -> str:
    return (cluster.result_dir(job_id) / "logs" / f"{site}.log").read_text()


def _site_app(cluster: Cluster, job_id: str, site: str) -> Path:
    return cluster.kits[site] / "workspace" / "jobs" / job_id / "app"


def _env_folders(envs: Path) -> list[Path]:
    return sorted(p for p in envs.iterdir() if p.is_dir())


def _sites_built_the_env(cluster: Cluster, tmp_path: Path, envs: Path) -> Path:
    """The module's one environment, built by the sites for a job if no test did yet
    (tests run in random order)."""
    if not _env_folders(envs):
        job_id = cluster.submit(_job(tmp_path / "first", "scaleout-first", rounds=1))
        assert cluster.wait_done(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"
    (env,) = _env_folders(envs)
    return env


def test_an_unmodified_compute_package_trains_three_rounds_to_the_fedavg_model(
    cluster: Cluster, tmp_path: Path, envs: Path
) -> None:
    job = _job(tmp_path, "scaleout-numpy", rounds=3)
    # what .ignore lists stays home: submit_job leaves it out
    (job / "app" / "notes").mkdir()
    (job / "app" / "notes" / "todo.txt").write_text("not for the sites")
    (job / "app" / "package.tgz").write_bytes(b"an old package")
    job_id = cluster.submit(job)
    meta = cluster.wait_done(job_id, timeout=180)
    assert meta["status"] == "FINISHED:COMPLETED", meta

    # FedAvg of one gradient step per site, from the data each site's startup wrote
    splits = {}
    for site in SITES:
        app = _site_app(cluster, job_id, site)
        assert not (app / "notes").exists() and not (app / "package.tgz").exists()
        with np.load(app / "data" / "split.npz") as data:
            splits[site] = (data["x_train"], data["y_train"])
    w, b = SEED_W, SEED_B
    for _ in range(3):
        steps = {s: local_step(w, b, *splits[s]) for s in SITES}
        n = {s: len(splits[s][1]) for s in SITES}
        w = sum(n[s] * steps[s][0] for s in SITES) / sum(n.values())
        b = sum(n[s] * steps[s][1] for s in SITES) / sum(n.values())
    final = load_params(cluster.result_dir(job_id) / "global_model.npz")
    assert sorted(final) == ["0", "1"]  # numpyhelper's names, kept through aggregation
    np.testing.assert_allclose(final["0"], w, rtol=1e-9)
    np.testing.assert_allclose(final["1"], b, rtol=1e-9)

    # validate ran as `python validate.py MODEL_IN validations.json` on every site
    rows = cluster.session.get_validations(job_id)
    assert {(r.site, r.round) for r in rows} == {(s, r) for s in SITES for r in (1, 2, 3)}
    assert all(r.metrics["val_mse"] > 0 for r in rows)

    # one environment, built once: one site built it (pip's output in its job log), the
    # other waited for it or found it built; or both found it built by an earlier test
    (env,) = _env_folders(envs)
    assert (env / MARKER).is_file()
    logs = {site: _site_log(cluster, job_id, site) for site in SITES}
    builders = [site for site, text in logs.items() if "[python_env] building environment" in text]
    assert len(builders) <= 1, logs
    for site in set(SITES) - set(builders):
        assert "reusing environment" in logs[site] or "waiting" in logs[site]
    for site in builders:
        assert "Successfully installed fedn-0.0.1" in logs[site]


def test_a_second_job_with_the_same_python_env_reuses_the_environment(
    cluster: Cluster, tmp_path: Path, envs: Path
) -> None:
    env = _sites_built_the_env(cluster, tmp_path, envs)
    built = (env / MARKER).read_text()
    stamp = (env / MARKER).stat().st_mtime_ns
    job_id = cluster.submit(_job(tmp_path, "scaleout-again", rounds=1))
    assert cluster.wait_done(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"
    assert _env_folders(envs) == [env]
    assert (env / MARKER).read_text() == built and (env / MARKER).stat().st_mtime_ns == stamp
    for site in SITES:
        text = _site_log(cluster, job_id, site)
        assert "reusing environment" in text and "building environment" not in text


def test_a_broken_python_env_fails_the_job_with_pips_error(
    cluster: Cluster, tmp_path: Path, envs: Path
) -> None:
    before = _env_folders(envs)
    job = _job(
        tmp_path,
        "scaleout-broken",
        rounds=1,
        targets=["server", "site-1"],
        dependency="fedn==9.9.9",
    )
    job_id = cluster.submit(job)
    meta = cluster.wait_done(job_id, timeout=120)
    assert meta["status"] == "FINISHED:FAILED_TO_RUN", meta
    text = json.dumps(meta)
    assert "site-1" in text and "No matching distribution found for fedn==9.9.9" in text, meta
    assert _env_folders(envs) == before  # the failed build left no folder behind
    assert "ERROR: No matching distribution found" in _site_log(cluster, job_id, "site-1")


def test_the_server_refuses_a_package_as_strictly_as_flare_job_validate(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = _job(tmp_path, "scaleout-typo", rounds=1)
    yaml_file = job / "app" / "scaleout.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("  train:", "  trian:"))
    expected = "field 'entry_points' has unknown key 'trian' (did you mean 'train'?)"
    assert job_main(["validate", str(job)]) == 1
    with pytest.raises(InvalidJobDefinition, match=re.escape(expected)):
        cluster.submit(job)


def test_flare_job_run_build_writes_the_seed_in_the_environment_the_sites_built(
    cluster: Cluster,
    tmp_path: Path,
    envs: Path,
    wheels: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = _sites_built_the_env(cluster, tmp_path, envs)
    app = write_package(tmp_path / "job" / "app")
    # pip settings for `flare job run` are yours: here, the same local folder
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    argv = ["run", "build", "--path", str(app), "--envs", str(envs), "--system-site-packages"]
    assert job_main([*argv, "--output", str(app / "seed.npz")]) == 0
    out = capsys.readouterr().out
    assert f"reusing environment {env}" in out  # same interpreter, same spec: the sites' env
    assert (tmp_path / "job" / "seed.npz").is_file()  # where model.py writes it: ../seed.npz
    seed = load_params(app / "seed.npz")
    np.testing.assert_array_equal(seed["0"], SEED_W)
    np.testing.assert_array_equal(seed["1"], SEED_B)
    assert job_main(["validate", str(tmp_path / "job" / "app")]) == 0
