"""As whom a site runs user code: ``run_user_code_as`` and the checks made at start."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import pytest

import tests.kit_factory as kf
from flare_protocol.errors import ExecutionError, KitError
from flare_protocol.kit import load_kit
from flare_site.executors.base import (
    RECEIVED,
    JobContext,
    check_written_file,
    take_written_file,
)
from flare_site.executors.process import UserProcess
from flare_site.settings import load_site_settings
from flare_site.user_account import (
    UserAccount,
    check_key_not_owned,
    check_reachable,
    user_code_account,
)

NOBODY = UserAccount.lookup("nobody")


def test_a_root_site_must_name_the_user_code_runs_as() -> None:
    with pytest.raises(KitError) as info:
        user_code_account(None, source="kit/local/settings.json", euid=0)
    message = str(info.value)
    assert message.startswith("kit/local/settings.json: this site runs as root")
    assert "'run_user_code_as'" in message and '"nobody"' in message and '"root"' in message


def test_a_root_site_runs_user_code_as_the_named_user_or_as_root_when_told() -> None:
    assert user_code_account("nobody", euid=0) == NOBODY
    assert user_code_account(str(NOBODY.uid), euid=0) == NOBODY
    assert user_code_account("root", euid=0) is None  # as the site's own user: root


def test_an_unknown_user_is_named() -> None:
    with pytest.raises(KitError, match="'no-such-user-4711', which does not exist"):
        user_code_account("no-such-user-4711", euid=0)


def test_a_site_that_is_not_root_runs_user_code_as_itself() -> None:
    assert user_code_account(None, euid=NOBODY.uid) is None
    assert user_code_account("nobody", euid=NOBODY.uid) is None
    with pytest.raises(KitError, match="only root can run user code as another user"):
        user_code_account("root", euid=NOBODY.uid)


def test_the_setting_is_read_from_local_settings(provisioned: Any, tmp_path: Path) -> None:
    kit = kf.copy_kit(provisioned, "site-1", tmp_path)
    (kit / "local" / "settings.json").write_text(json.dumps({"run_user_code_as": "nobody"}))
    assert load_site_settings(load_kit(kit)).run_user_code_as == "nobody"
    (kit / "local" / "settings.json").write_text(json.dumps({"run_user_code_as": 65534}))
    with pytest.raises(KitError, match="'run_user_code_as' must be a string"):
        load_site_settings(load_kit(kit))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make folders of other owners")
def test_a_folder_the_user_cannot_pass_is_named_with_its_mode(tmp_path: Path) -> None:
    # the first folder above the workspace that nobody may not pass is named (pytest's
    # own base folder is 0700 already)
    closed = next(p for p in reversed(tmp_path.parents) if not p.stat().st_mode & 0o001)
    with pytest.raises(KitError) as info:
        check_reachable(tmp_path / "workspace", NOBODY, "the site's workspace")
    mode = f"{closed.stat().st_mode & 0o7777:04o}"
    assert f"{closed} is mode {mode}" in str(info.value) and "--workspace" in str(info.value)


def test_a_reachable_folder_passes(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.geteuid())
    check_reachable(tmp_path, UserAccount(me.pw_name, me.pw_uid, me.pw_gid, me.pw_dir), "it")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the key")
def test_a_key_owned_by_the_user_of_user_code_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("secret")
    os.chmod(key, 0o600)
    check_key_not_owned(key, NOBODY)
    os.chown(key, NOBODY.uid, NOBODY.gid)
    with pytest.raises(KitError, match="can be read by nobody"):
        check_key_not_owned(key, NOBODY)


def test_a_file_user_code_wrote_must_be_a_plain_file_of_its_own(tmp_path: Path) -> None:
    secret = tmp_path / "client.key"
    secret.write_text("secret")
    plain = tmp_path / "update.npz"
    plain.write_bytes(b"x")
    check_written_file(plain, "train")
    link = tmp_path / "link.npz"
    link.symlink_to(secret)
    hard = tmp_path / "hard.npz"
    os.link(secret, hard)
    for path in (link, hard):
        with pytest.raises(ExecutionError, match="is not a plain file"):
            check_written_file(path, "train")
    with pytest.raises(ExecutionError, match="no model was written"):
        check_written_file(tmp_path / "missing.npz", "train")


def test_a_file_written_by_user_code_of_another_user_is_taken_out_of_its_reach(
    tmp_path: Path,
) -> None:
    ctx = JobContext("job", "site-1", tmp_path / "app", tmp_path, run_as=NOBODY)
    written = tmp_path / "models" / "r1.npz"
    written.parent.mkdir()
    written.write_bytes(b"update")
    taken = take_written_file(written, ctx, "train")
    assert taken.parent == tmp_path / RECEIVED and taken.read_bytes() == b"update"
    assert not written.exists()
    assert (taken.parent.stat().st_mode & 0o777) == 0o700
    written.symlink_to(tmp_path / "client.key")
    with pytest.raises(ExecutionError, match="is not a plain file"):
        take_written_file(written, ctx, "train")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
async def test_user_code_of_another_user_runs_as_it_without_the_sites_groups(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    proc = await UserProcess.spawn(
        ["sh", "-c", "id -u; id -G"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        on_output=lambda _stream, line: lines.append(line),
        run_as=NOBODY,
    )
    assert await proc.wait() == 0
    assert lines == [str(NOBODY.uid), str(NOBODY.gid)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
async def test_a_program_the_user_cannot_run_is_named_with_the_setting(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    program = private / "run.sh"
    program.write_text("#!/bin/sh\necho hi\n")
    program.chmod(0o700)
    proc = await UserProcess.spawn([str(program)], cwd=tmp_path, env={}, run_as=NOBODY)
    assert await proc.wait() == 126
    assert f"cannot run {program} as nobody (run_user_code_as)" in proc.stderr_tail()
