"""Fuzzing uploaded job archives: a packed job validates and extracts to exactly its
files, and any archive an attacker uploads instead is a job or an InvalidJobDefinition,
with nothing written outside the destination and nothing left at it after a refusal."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import InvalidJobDefinition
from flare_server.jobs.archive import ArchiveLimits, safe_extract, validate_job_archive
from flare_site.job_pack import pack_job
from tests.zip_fuzzing import hostile_zips

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
#: Small limits, so that caps are reached by small archives too.
LIMITS = ArchiveLimits(
    max_upload_bytes=4 * 1024**2, max_uncompressed_bytes=8 * 1024**2, max_entries=50
)


@contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-archive-") as name:
        yield Path(name)


def _packed(job: str) -> bytes:
    with _folder() as folder:
        return pack_job(EXAMPLES / job, folder / "job.zip").path.read_bytes()


#: Each example job as ``flare job pack`` (and so submit_job) packs it.
PACKED = {p.parent.name: _packed(p.parent.name) for p in sorted(EXAMPLES.glob("*/meta.json"))}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@given(st.sampled_from(sorted(PACKED)))
def test_a_packed_job_validates_and_extracts_to_its_files(job: str) -> None:
    with _folder() as folder:
        archive = folder / "job.zip"
        archive.write_bytes(PACKED[job])
        definition = validate_job_archive(archive, LIMITS)
        assert safe_extract(archive, folder / "out", LIMITS) == definition
        extracted = _files(folder / "out")
        assert sorted(extracted) == list(definition.files)
        original = EXAMPLES / job
        assert all((original / name).read_bytes() == data for name, data in extracted.items())


def _everything_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@given(st.sampled_from(sorted(PACKED)).flatmap(lambda job: hostile_zips(PACKED[job], job + "/")))
# bug: without its first byte, zipfile places entries at offset -1: OSError out of the
# placement check (seek to -1)
@example(PACKED["hello-numpy"][1:])
def test_any_upload_is_a_job_or_invalid_job_definition_and_extracts_only_inside(
    data: bytes,
) -> None:
    with _folder() as folder:
        archive = folder / "in" / "job.zip"
        archive.parent.mkdir()
        archive.write_bytes(data)
        try:
            definition = validate_job_archive(archive, LIMITS)
        except InvalidJobDefinition as exc:
            assert exc.message
            definition = None
        dest = folder / "in" / "out"
        try:
            extracted = safe_extract(archive, dest, LIMITS)
        except InvalidJobDefinition:
            assert not os.path.lexists(dest), "a refused archive left its destination"
        else:
            # safe_extract skips validation's placement check of each entry's bytes (an
            # upload was validated when it was kept; what is extracted is CRC-checked), so
            # it may extract an archive whose directory lies about compressed sizes.
            assert definition is None or extracted == definition
            written = _everything_under(dest)
            assert {f for f in written if (dest / f).is_file()} == set(extracted.files)
            assert all(not (dest / f).is_symlink() for f in written)
        # nothing was written beside the archive, nor outside its folder
        assert _everything_under(folder) - {"in", "in/job.zip"} <= {
            "in/out/" + f for f in _everything_under(dest)
        } | ({"in/out"} if dest.exists() else set())
