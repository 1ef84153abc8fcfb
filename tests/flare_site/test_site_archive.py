"""A site extracts an app archive only after its own checks: the server's word is not enough."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from flare_protocol.errors import InvalidJobDefinition
from flare_site.archive import AppLimits, extract_app
from tests.flare_server.jobs.jobzip_helpers import patch_declared_size

CONFIG = ("config/config_fed_client.json", b'{"executor": "script", "script": "custom/t.py"}')


def app_zip(path: Path, *entries: tuple[zipfile.ZipInfo | str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (CONFIG, *entries):
            zf.writestr(name, data)
    return path


def symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (("../escape.py", b"x"), "has a '..' component"),
        (("/etc/cron.d/x", b"x"), "absolute"),
        ((symlink("custom/link"), b"/etc/passwd"), "is a symlink"),
        (("CONFIG/config_fed_client.json", b"{}"), "only by case"),
        (("config/config_fed_client.json/inner", b"x"), "lies inside a file"),
    ],
    ids=["parent", "absolute", "symlink", "case-twin", "file-as-folder"],
)
def test_a_hostile_entry_is_refused_by_name_and_nothing_is_written(
    tmp_path: Path, entry: tuple[zipfile.ZipInfo | str, bytes], words: str
) -> None:
    path = app_zip(tmp_path / "app.zip", entry)
    with pytest.raises(InvalidJobDefinition, match="app archive entry") as info:
        extract_app(path, tmp_path / "out")
    assert words in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["app.zip"]


def test_an_entry_lying_about_its_size_is_stopped_while_inflating(tmp_path: Path) -> None:
    path = app_zip(tmp_path / "app.zip", ("custom/bomb.bin", bytes(8 * 1024 * 1024)))
    patch_declared_size(path, "custom/bomb.bin", 1000)
    with pytest.raises(InvalidJobDefinition, match="'custom/bomb.bin' is corrupt or inflates"):
        extract_app(path, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["app.zip"]


def test_too_many_entries_are_refused_before_any_is_read(tmp_path: Path) -> None:
    path = app_zip(tmp_path / "app.zip", *((f"custom/{i}.py", b"") for i in range(5)))
    with pytest.raises(InvalidJobDefinition, match="has 6 entries; at most 3"):
        extract_app(path, tmp_path / "out", AppLimits(max_entries=3))


def test_a_good_app_is_extracted_whole_and_private_to_the_site(tmp_path: Path) -> None:
    path = app_zip(tmp_path / "app.zip", ("custom/t.py", b"print(1)\n"), ("custom/pkg/", b""))
    assert extract_app(path, tmp_path / "out") == 2
    assert (tmp_path / "out" / "custom" / "t.py").read_bytes() == b"print(1)\n"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700
