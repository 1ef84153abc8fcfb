"""Checks an uploaded job archive (a zip) before anything in it is kept or extracted.

Theory of operation: an upload is hostile until proven otherwise. :func:`validate_job_archive`
works in this order, cheapest first, and stops at the first problem, naming the entry:

1. the file size against ``max_upload_bytes``;
2. the entry count from the end-of-central-directory record, *before* ``zipfile`` builds an
   object per entry (a tiny archive can declare millions);
3. every entry (:func:`flare_protocol.safe_zip.scan_entries`, the checks sites and the
   Session run too): safe relative name, not a symlink, device, FIFO or socket (Unix mode
   in ``external_attr``), not encrypted, a known compression method, no duplicates (also
   case-insensitive), no file used as a folder;
4. the declared uncompressed total against ``max_uncompressed_bytes``, and the compression
   ratio against ``max_ratio``: each entry's declared uncompressed size over its compressed
   size (entries under 64 KiB are exempt: small text compresses very well), and the declared
   total over the archive's real size. A zip bomb that tells the truth about its sizes is
   refused here, before a byte is inflated; one that lies is stopped in step 6, since no
   entry may inflate beyond what it declares;
5. the layout: ``meta.json`` at the archive root, or exactly one top-level folder
   ``<job_name>/`` holding ``meta.json`` and everything else (NVIDIA FLARE's zips look like
   this); nothing may sit beside that folder;
6. the contents: every *compressed* entry is inflated through a counting reader that stops at
   its declared size and at the total cap, and its CRC is checked, so an entry that inflates
   to more than it declares (a zip bomb lying about its size) is refused without being
   materialised. A *stored* entry cannot inflate: it is checked without reading its data
   (declared sizes equal, local header present and naming the same file, data inside the
   archive and overlapping no other entry, so stored entries together never exceed the
   upload's size). Its CRC is checked when it is extracted (:func:`safe_extract`, by the
   job runner before anything runs): reading a GiB of weights back at upload only to
   find a corruption that TLS and the extraction both catch cost about 0.3 s per GiB;
7. the job format (meta.json schema, app folders, app configs) via
   :func:`flare_protocol.job_format.validate_job_files`.

:func:`safe_extract` runs the same checks and then writes only regular files into a fresh
temporary folder (``O_EXCL | O_NOFOLLOW``, the same caps enforced while writing), fsyncs them
and renames the folder into place: the destination is complete or absent.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from flare_protocol.errors import InvalidArgumentError, InvalidJobDefinition
from flare_protocol.job_format import META_FILE, JobDefinition, validate_job_files
from flare_protocol.safe_zip import (
    CORRUPT,
    copy_entry,
    corrupt,
    extract_atomically,
    scan_entries,
)

__all__ = ["ArchiveLimits", "JobDefinition", "safe_extract", "validate_job_archive"]

GiB = 1024**3
#: Files read whole for validation (meta.json, app configs) may not exceed this size.
CONFIG_READ_MAX_BYTES = 16 * 1024 * 1024
#: Entries (and archives) declaring fewer uncompressed bytes are exempt from ``max_ratio``.
RATIO_MIN_BYTES = 64 * 1024
#: The default ``max_ratio``: deflate reaches about 1000:1 on zeros, while source code and
#: configs compress 3-10:1 and trained float weights barely at all.
DEFAULT_MAX_RATIO = 200.0
#: The server setting that sets ``max_ratio`` (named in the refusal).
RATIO_SETTING = "max_compression_ratio"


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied to an uploaded job archive (all configurable by the server)."""

    #: Largest accepted archive (compressed bytes on the wire).
    max_upload_bytes: int = 2 * GiB
    #: Largest sum of the entries' uncompressed sizes, declared or real.
    max_uncompressed_bytes: int = 8 * GiB
    #: Most entries (files and folders) in one archive.
    max_entries: int = 10_000
    #: Largest compression ratio (uncompressed/compressed) of an entry of at least
    #: ``RATIO_MIN_BYTES`` and of the whole archive; None disables the check.
    max_ratio: float | None = DEFAULT_MAX_RATIO
    #: Inflate every compressed entry and check its CRC, and check the placement of stored
    #: entries, during validation (step 6 above).
    verify_contents: bool = True


@dataclass(frozen=True)
class _Scan:
    prefix: str
    files: dict[str, zipfile.ZipInfo]  # relative name -> entry
    declared_total: int


def _reject(message: str, entry: str | None = None) -> InvalidJobDefinition:
    return InvalidJobDefinition(message, path=entry) if entry else InvalidJobDefinition(message)


def _declared_entry_count(path: Path) -> int | None:
    """Entry count from the (zip64) end-of-central-directory record, or None if not found."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        tail_len = min(size, 22 + 65535 + 20)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + 22 > len(tail):
            return None
        count = struct.unpack_from("<H", tail, pos + 10)[0]
        if count != 0xFFFF or pos < 20 or tail[pos - 20 : pos - 16] != b"PK\x06\x07":
            return int(count)
        zip64_offset = struct.unpack_from("<Q", tail, pos - 20 + 8)[0]
        if zip64_offset + 56 > size:
            return None
        f.seek(zip64_offset)
        record = f.read(56)
        if record[:4] != b"PK\x06\x06":
            return None
        return int(struct.unpack_from("<Q", record, 32)[0])


def _scan(zf: zipfile.ZipFile, limits: ArchiveLimits, size: int) -> _Scan:
    entries = scan_entries(
        zf,
        max_entries=limits.max_entries,
        max_uncompressed_bytes=limits.max_uncompressed_bytes,
        reject=_reject,
    )
    if limits.max_ratio is not None:
        _check_ratios(entries.files, entries.declared, size, limits.max_ratio)
    prefix = _layout_prefix(entries.files, entries.names)
    return _Scan(prefix, entries.files, entries.declared)


def _check_ratios(
    files: dict[str, zipfile.ZipInfo], declared: int, size: int, max_ratio: float
) -> None:
    """Refuse an entry, or the archive, that declares too many bytes for its compressed size."""
    allowed = f"at most {max_ratio:g}:1 is allowed (server setting {RATIO_SETTING})"
    for name, info in files.items():
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_MIN_BYTES and ratio > max_ratio:
            raise _reject(
                f"archive entry {name!r} has a compression ratio of {ratio:.0f}:1 "
                f"({info.file_size} bytes from {info.compress_size}); {allowed}",
                name,
            )
    ratio = declared / max(size, 1)
    if declared >= RATIO_MIN_BYTES and ratio > max_ratio:
        raise _reject(
            f"archive has a compression ratio of {ratio:.0f}:1 overall ({declared} bytes "
            f"from a {size}-byte archive); {allowed}"
        )


def _layout_prefix(files: dict[str, zipfile.ZipInfo], names: tuple[str, ...]) -> str:
    if META_FILE in files:
        return ""
    tops = sorted({name.split("/", 1)[0] for name in names})
    if len(tops) == 1:
        prefix = tops[0] + "/"
        if prefix + META_FILE in files:
            return prefix
    shown = ", ".join(tops[:5]) + (", ..." if len(tops) > 5 else "")
    raise _reject(
        f"archive has no {META_FILE} at its root and is not one job folder holding "
        f"{META_FILE} (top-level entries: {shown or 'none'})"
    )


def _corrupt(name: str, exc: BaseException) -> Exception:
    return corrupt(_reject, "archive", name, exc)


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"


def _check_placement(zf: zipfile.ZipFile, zip_path: Path, files: list[zipfile.ZipInfo]) -> None:
    """Every entry's local header is where the central directory says, names the same
    file, and its data lies inside the archive without overlapping the next entry."""
    entries = sorted(files, key=lambda i: i.header_offset)
    end_of_data = zf.start_dir
    with open(zip_path, "rb") as fh:
        for n, info in enumerate(entries):
            name = info.orig_filename
            fh.seek(info.header_offset)
            raw = fh.read(_LOCAL_HEADER.size)
            if len(raw) != _LOCAL_HEADER.size or raw[:4] != _LOCAL_SIGNATURE:
                raise _corrupt(name, EOFError("no local header where the directory points"))
            _, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
            local_name = fh.read(name_len)
            if local_name not in (name.encode("utf-8"), name.encode("cp437", "replace")):
                raise _corrupt(name, ValueError("the local header names another file"))
            data_end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            data_end += info.compress_size
            limit = entries[n + 1].header_offset if n + 1 < len(entries) else end_of_data
            if data_end > limit:
                raise _reject(
                    f"archive entry {name!r} overlaps the next entry or the directory", name
                )


def _check_stored(info: zipfile.ZipInfo, budget: list[int]) -> None:
    name = info.orig_filename
    if info.compress_size != info.file_size:
        raise _corrupt(
            name,
            ValueError(f"stored, yet {info.compress_size} bytes stand for {info.file_size} bytes"),
        )
    budget[0] -= info.file_size
    if budget[0] < 0:
        raise _reject(
            f"archive inflates beyond the cap of {budget[1]} uncompressed bytes at entry {name!r}",
            name,
        )


def _read_whole(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    name = info.orig_filename
    if info.file_size > CONFIG_READ_MAX_BYTES:
        raise _reject(
            f"archive entry {name!r} is {info.file_size} bytes, too large for a config file "
            f"(at most {CONFIG_READ_MAX_BYTES})",
            name,
        )
    try:
        with zf.open(info) as src:
            data = src.read(CONFIG_READ_MAX_BYTES + 1)
    except CORRUPT as exc:
        raise _corrupt(name, exc) from None
    if len(data) != info.file_size:
        raise _corrupt(name, EOFError(f"{len(data)} of {info.file_size} bytes"))
    return data


@contextmanager
def _open_checked(zip_path: Path, limits: ArchiveLimits) -> Iterator[tuple[zipfile.ZipFile, int]]:
    zip_path = Path(zip_path)
    try:
        size = zip_path.stat().st_size
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read job archive {zip_path}: {exc}") from None
    if size > limits.max_upload_bytes:
        raise _reject(f"archive is {size} bytes; at most {limits.max_upload_bytes} are allowed")
    count = _declared_entry_count(zip_path)
    if count is not None and count > limits.max_entries:
        raise _reject(f"archive has {count} entries; at most {limits.max_entries} are allowed")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, struct.error) as exc:
        raise _reject(f"upload is not a readable zip archive ({exc})") from None
    with zf:
        yield zf, size


def _definition(zf: zipfile.ZipFile, scan: _Scan) -> JobDefinition:
    relative = {name[len(scan.prefix) :]: info for name, info in scan.files.items()}

    def read(relpath: str) -> bytes | None:
        info = relative.get(relpath)
        return _read_whole(zf, info) if info is not None else None

    definition = validate_job_files(relative.keys(), read)
    return replace(definition, entries=len(relative), uncompressed_bytes=scan.declared_total)


def validate_job_archive(zip_path: Path, limits: ArchiveLimits = ArchiveLimits()) -> JobDefinition:
    """Validate an uploaded job archive without extracting it.

    Raises:
        InvalidJobDefinition: naming the entry (attribute ``path``) or the meta.json field.
    """
    with _open_checked(zip_path, limits) as (zf, size):
        scan = _scan(zf, limits, size)
        if limits.verify_contents:
            _check_placement(zf, zip_path, list(scan.files.values()))
            budget = [limits.max_uncompressed_bytes, limits.max_uncompressed_bytes]
            for info in scan.files.values():
                if info.compress_type == zipfile.ZIP_STORED:
                    _check_stored(info, budget)
                else:
                    copy_entry(zf, info, None, budget, _reject)
        return _definition(zf, scan)


def safe_extract(
    zip_path: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()
) -> JobDefinition:
    """Validate the archive, then extract its job folder into ``dest`` (which must not exist).

    ``dest`` receives the job root (``meta.json`` and app folders), without the archive's
    top-level folder. Only regular files are written, never through a link; the caps hold
    while writing. On any error nothing is left at ``dest``.
    Raises:
        InvalidJobDefinition: as :func:`validate_job_archive`.
        InvalidArgumentError: ``dest`` already exists.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise InvalidArgumentError(f"cannot extract into {dest}: it already exists", path=str(dest))
    with _open_checked(zip_path, limits) as (zf, size):
        scan = _scan(zf, limits, size)
        definition = _definition(zf, scan)
        extract_atomically(
            zf,
            scan.files,
            dest,
            _reject,
            max_uncompressed_bytes=limits.max_uncompressed_bytes,
            prefix=scan.prefix,
        )
    return definition
