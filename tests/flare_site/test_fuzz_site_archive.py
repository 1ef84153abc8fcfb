"""Fuzzing the app archive a site extracts: an app the server zips extracts to exactly
its files, and any archive instead is extracted inside its destination or refused with
an InvalidJobDefinition, leaving nothing behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from flare_protocol.errors import InvalidJobDefinition
from flare_site.archive import AppLimits, extract_app
from tests.zip_fuzzing import hostile_zips, zip_bytes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIMITS = AppLimits(max_entries=50, max_uncompressed_bytes=8 * 1024**2)


def _app(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


#: Every example app, as the server zips it for a site (its files at the archive's root).
APPS = {p.parent.name: _app(p) for p in sorted(EXAMPLES.glob("*/app"))}
ZIPS = {name: zip_bytes(files) for name, files in APPS.items()}


@contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-app-") as name:
        yield Path(name)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@given(st.sampled_from(sorted(APPS)), st.booleans())
def test_an_app_extracts_to_exactly_its_files(app: str, in_a_folder: bool) -> None:
    files = APPS[app]
    data = zip_bytes({f"{app}/{k}": v for k, v in files.items()}) if in_a_folder else ZIPS[app]
    with _folder() as folder:
        (folder / "app.zip").write_bytes(data)
        assert extract_app(folder / "app.zip", folder / "out", LIMITS) == len(files)
        out = folder / "out"
        assert {n: (out / n).read_bytes() for n in _tree(out) if (out / n).is_file()} == files


@given(st.sampled_from(sorted(ZIPS)).flatmap(lambda app: hostile_zips(ZIPS[app])))
def test_any_app_archive_is_extracted_inside_or_refused_leaving_nothing(data: bytes) -> None:
    with _folder() as folder:
        (folder / "app.zip").write_bytes(data)
        dest = folder / "out"
        try:
            count = extract_app(folder / "app.zip", dest, LIMITS)
        except InvalidJobDefinition as exc:
            assert exc.message
            assert not os.path.lexists(dest)
        else:
            written = _tree(dest)
            assert sum((dest / n).is_file() for n in written) == count
            assert not any((dest / n).is_symlink() for n in written)
        assert _tree(folder) - {"app.zip"} <= {"out"} | {f"out/{n}" for n in _tree(dest)}
