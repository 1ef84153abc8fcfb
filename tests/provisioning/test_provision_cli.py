"""``flare provision`` and ``flare kit verify``: in-process main(argv), and one real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flare_cli.main import main as flare
from provisioning import ProvisionResult, cli, kit_cli
from tests.kit_factory import copy_kit

FP_RE = re.compile(r"root CA SHA-256 fingerprint: ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})")


def test_provision_prints_where_and_the_fingerprint(
    tmp_path: Path, project_yml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-p", str(project_yml), "-w", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote 8 kits to {tmp_path / 'testproj' / 'prod_00'}" in out
    assert "issued 8, reused 0, revoked 0" in out
    fingerprint = FP_RE.search(out)
    assert fingerprint is not None
    kit = tmp_path / "testproj" / "prod_00" / "site-1"
    assert kit_cli.main(["verify", str(kit), "--ca-fingerprint", fingerprint.group(1)]) == 0
    assert "matches the given fingerprint" in capsys.readouterr().out


def test_flare_dispatches_both_commands(
    tmp_path: Path, project_yml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert flare(["provision", "-q", "-p", str(project_yml), "-w", str(tmp_path)]) == 0
    fingerprint = capsys.readouterr().out.strip()
    kit = tmp_path / "testproj" / "prod_00" / "admin@org_a.com"
    assert flare(["kit", "verify", str(kit), "--ca-fingerprint", fingerprint.lower()]) == 0


def test_nvidia_builders_section_gives_one_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = Path(__file__).with_name("nvflare-style-project.yml")
    assert cli.main(["-p", str(example), "-w", str(tmp_path)]) == 0
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "builders" in notices[0]


def test_bad_project_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "project.yml"
    path.write_text("name: p\nparticipants:\n  - {name: s, type: sever, org: o}\n")
    assert cli.main(["-p", str(path), "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: participant 's'")
    assert "field 'type'" in err and "Traceback" not in err


def test_missing_project_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-p", str(tmp_path / "none.yml"), "-w", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_passphrase_comes_from_the_environment(
    tmp_path: Path,
    project_yml: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        cli.main(
            ["-p", str(project_yml), "-w", str(tmp_path), "--ca-passphrase-env", "FLARE_TEST_PASS"]
        )
        == 2
    )
    assert "FLARE_TEST_PASS" in capsys.readouterr().err
    monkeypatch.setenv("FLARE_TEST_PASS", "s3cret")
    assert (
        cli.main(
            ["-p", str(project_yml), "-w", str(tmp_path), "--ca-passphrase-env", "FLARE_TEST_PASS"]
        )
        == 0
    )
    state_key = tmp_path / "testproj" / "state" / "ca.key"
    assert b"ENCRYPTED" in state_key.read_bytes()


def test_revoke_option_revokes_and_reissues(
    tmp_path: Path, project_yml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-p", str(project_yml), "-w", str(tmp_path)]) == 0
    assert cli.main(["-p", str(project_yml), "-w", str(tmp_path), "--revoke", "site-2"]) == 0
    assert "issued 1, reused 7, revoked 1 (site-2)" in capsys.readouterr().out


def test_kit_verify_names_the_tampered_file_and_exits_1(
    provisioned: ProvisionResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = copy_kit(provisioned, "site-2", tmp_path)
    (kit / "startup" / "fed_client.json").write_text("{}")
    assert kit_cli.main(["verify", str(kit)]) == 1
    err = capsys.readouterr().err
    assert str(kit / "startup" / "fed_client.json") in err and err.count("\n") == 1


def test_kit_verify_refuses_a_wrong_fingerprint(
    provisioned: ProvisionResult, foreign: ProvisionResult, capsys: pytest.CaptureFixture[str]
) -> None:
    code = kit_cli.main(
        ["verify", str(provisioned.kits["site-1"]), "--ca-fingerprint", foreign.ca_fingerprint]
    )
    assert code == 1 and "rootCA.pem" in capsys.readouterr().err


def test_kit_verify_rejects_a_malformed_fingerprint(
    provisioned: ProvisionResult, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        kit_cli.main(["verify", str(provisioned.kits["site-1"]), "--ca-fingerprint", "1234"]) == 2
    )
    assert "64 hex digits" in capsys.readouterr().err


def test_kit_verify_on_a_folder_that_is_no_kit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kit_cli.main(["verify", str(tmp_path)]) == 1
    assert "no startup/ folder" in capsys.readouterr().err


def test_flare_provision_as_a_real_process(tmp_path: Path, project_yml: Path) -> None:
    flare_bin = Path(sys.executable).with_name("flare")
    command = [str(flare_bin)] if flare_bin.exists() else [sys.executable, "-m", "flare_cli.main"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [*command, "provision", "-p", str(project_yml)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "startup_kits" / "testproj" / "prod_00" / "localhost").is_dir()
    fingerprint = FP_RE.search(done.stdout)
    assert fingerprint is not None
    verify = subprocess.run(
        [
            *command,
            "kit",
            "verify",
            "startup_kits/testproj/prod_00/site-1",
            "--ca-fingerprint",
            fingerprint.group(1),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr


@pytest.mark.parametrize("option", ["--cert-days", "--ca-days"])
def test_non_positive_validity_is_refused(
    tmp_path: Path, project_yml: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-p", str(project_yml), "-w", str(tmp_path), option, "0"]) == 2
    assert "positive number of days" in capsys.readouterr().err
    assert not (tmp_path / "testproj").exists()
