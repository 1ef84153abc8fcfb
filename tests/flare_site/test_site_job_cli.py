"""``flare job validate`` and ``flare job run``, in-process and once as a real command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.models import load_params, save_params
from flare_site.job_cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOBS = [
    "hello-numpy",
    "hello-numpy-fedopt",
    "hello-numpy-command",
    "pytorch-cifar-like",
    "scaleout-numpy",
]


@pytest.mark.parametrize("job", JOBS)
def test_every_example_validates(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES / job)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: job {job!r}")


def _copy(tmp_path: Path, job: str = "hello-numpy") -> Path:
    return Path(shutil.copytree(EXAMPLES / job, tmp_path / job))


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_bad_server_field_fails_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _copy(tmp_path)
    _edit_json(job / "app/config/config_fed_server.json", num_rounds=0)
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    assert "app/config/config_fed_server.json: field 'num_rounds' must be >= 1, got 0" in err


def test_a_missing_script_fails_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _copy(tmp_path)
    (job / "app/custom/train.py").unlink()
    assert main(["validate", str(job)]) == 1
    assert "field 'script' names 'custom/train.py'" in capsys.readouterr().err


def test_a_bad_meta_json_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _copy(tmp_path)
    (job / "meta.json").write_text("{not json")
    assert main(["validate", str(job)]) == 1
    assert "meta.json" in capsys.readouterr().err


def test_a_traversing_command_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _copy(tmp_path, "hello-numpy-command")
    _edit_json(
        job / "app/config/config_fed_client.json",
        train=["../../bin/train", "{model_out}", "{metadata_out}"],
    )
    assert main(["validate", str(job)]) == 1
    assert "field 'train[0]' must be a relative path inside the app" in capsys.readouterr().err


def test_an_app_folder_alone_can_be_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES / "hello-numpy/app")]) == 0
    assert "OK: app 'app'" in capsys.readouterr().out


def test_run_train_with_the_script_executor_writes_the_update(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = EXAMPLES / "hello-numpy/app"
    out, meta = tmp_path / "update.npz", tmp_path / "meta.json"
    argv = ["run", "train", "--path", str(app), "--input", str(app / "models/initial_model.npz")]
    assert main([*argv, "--output", str(out), "--metadata", str(meta), "--site", "site-1"]) == 0
    params = load_params(out)
    assert params["w"].shape == (4,)
    assert json.loads(meta.read_text())["num_examples"] > 0
    captured = capsys.readouterr().out
    assert "metric train_loss=" in captured and "OK: update written" in captured


def test_run_validate_writes_metrics(tmp_path: Path) -> None:
    model = save_params({"w": np.zeros(4), "b": np.zeros(())}, tmp_path / "g.npz")
    out = tmp_path / "metrics.json"
    app = EXAMPLES / "hello-numpy-command/app"
    assert (
        main(["run", "validate", "--path", str(app), "--input", str(model), "--output", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["val_mse"] > 0


def test_run_startup_and_train_with_the_command_executor(tmp_path: Path) -> None:
    app = EXAMPLES / "hello-numpy-command/app"
    assert main(["run", "startup", "--path", str(app)]) == 0
    assert main(["run", "train", "--path", str(app), "--output", str(tmp_path / "u.npz")]) == 0
    assert set(load_params(tmp_path / "u.npz")) == {"w", "b"}
    assert sorted(p.name for p in app.iterdir()) == ["config", "custom"]  # nothing written


def test_run_reports_a_crash_with_the_stderr_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _copy(tmp_path)
    (job / "app/custom/train.py").write_text(
        "import flare_site.client as flare\nflare.init()\nflare.receive()\n1 / 0\n"
    )
    argv = ["run", "train", "--path", str(job / "app"), "--output", str(tmp_path / "u.npz")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error: user code failed" in err and "ZeroDivisionError" in err


def test_run_needs_output_and_a_real_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = str(EXAMPLES / "hello-numpy/app")
    assert main(["run", "train", "--path", app]) == 1
    assert "needs --output" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"junk")
    assert main(["run", "validate", "--path", app, "--input", str(bad), "--output", "x"]) == 1
    assert "not an .npz archive" in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    assert main([]) == 2
    assert main(["run", "fly", "--path", "x"]) == 2


def test_flare_job_validate_as_a_real_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flare_cli.main", "job", "validate", str(EXAMPLES / "hello-numpy")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: job 'hello-numpy'")


def _package_job(tmp_path: Path) -> Path:
    """A job whose app is the Scaleout compute package, with local files .ignore lists."""
    from tests.compute_package import write_package

    job = tmp_path / "scaleout-job"
    app = write_package(job / "app")
    np.savez_compressed(app / "seed.npz", **{"0": np.zeros(4), "1": np.zeros(1)})
    (app / "config").mkdir()
    (app / "config/config_fed_server.json").write_text(
        json.dumps({"workflow": "fedavg", "num_rounds": 1, "initial_model": "seed.npz"})
    )
    (job / "meta.json").write_text(
        json.dumps({"name": "scaleout", "deploy_map": {"app": ["@ALL"]}})
    )
    for local in ("data/split.npz", "__pycache__/model.pyc", "notes/todo.txt", "old.tgz"):
        (app / local).parent.mkdir(exist_ok=True)
        (app / local).write_bytes(b"stays home")
    return job


def test_pack_writes_what_submit_job_sends_leaving_out_what_ignore_files_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import zipfile

    from flare_admin._upload import JobUpload

    job = _package_job(tmp_path)
    out = tmp_path / "out" / "job.zip"
    assert main(["pack", str(job), "-o", str(out)]) == 0
    assert "4 file(s) left out by ignore files" in capsys.readouterr().out
    names = sorted(zipfile.ZipFile(out).namelist())
    app = "scaleout-job/app/"
    assert names == sorted(
        ["scaleout-job/meta.json", f"{app}config/config_fed_server.json", f"{app}seed.npz"]
        + [app + n for n in (".ignore", "scaleout.yaml", "python_env.yaml")]
        + [app + n for n in ("model.py", "data.py", "train.py", "validate.py", "predict.py")]
    )
    sent = b"".join(JobUpload.from_path(job).chunks())  # what the Session streams
    assert sorted(zipfile.ZipFile(io.BytesIO(sent)).namelist()) == names


def test_pack_refuses_a_package_folder_and_what_the_server_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _package_job(tmp_path)
    assert main(["pack", str(job / "app"), "-o", str(tmp_path / "x.zip")]) == 1
    assert "no meta.json; flare job pack packs a job folder" in capsys.readouterr().err
    (job / "app/.ignore").write_text("train.py\n")  # leaves out what scaleout.yaml runs
    assert main(["pack", str(job), "-o", str(tmp_path / "x.zip")]) == 1
    assert "names 'train.py', which is not in app 'app'" in capsys.readouterr().err
    assert main(["validate", str(job)]) == 1  # validate checks what would be sent, too
    assert not (tmp_path / "x.zip").exists()


def test_a_package_folder_validates_as_an_app_and_build_needs_a_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _package_job(tmp_path)
    assert main(["validate", str(job / "app")]) == 0
    assert main(["validate", str(job)]) == 0
    capsys.readouterr()
    app = str(EXAMPLES / "hello-numpy-command/app")
    assert main(["run", "build", "--path", app]) == 1
    assert "no build entry point; build belongs to compute packages" in capsys.readouterr().err


def test_flare_job_pack_as_a_real_command(tmp_path: Path) -> None:
    out = tmp_path / "hello.zip"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flare_cli.main",
            "job",
            "pack",
            str(EXAMPLES / "hello-numpy"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"OK: wrote {out}: job 'hello-numpy'")
