"""Checks an uploaded job archive (a zip) before anything in it is kept or extracted.

Theory of operation: an upload is hostile until proven otherwise. :func:`validate_job_archive`
works in this order, cheapest first, and stops at the first problem, naming the entry:

1. the file size against ``max_upload_bytes``;
2. the entry count from the end-of-central-directory record, *before* ``zipfile`` builds an
   object per entry (a tiny archive can declare millions);
3. every entry: safe relative name (:func:`flare_protocol.job_format.path_problem`), not a
   symlink, device, FIFO or socket (Unix mode in ``external_attr``), not encrypted, a known
   compression method, no duplicates (also case-insensitive), no file used as a folder;
4. the declared uncompressed total against ``max_uncompressed_bytes`` (and the optional
   per-entry ``max_ratio``);
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
import secrets
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from flare_protocol.errors import InvalidArgumentError, InvalidJobDefinition
from flare_protocol.job_format import META_FILE, JobDefinition, path_problem, validate_job_files
from flare_server.jobs._fsutil import fsync_dir as _fsync_dir

__all__ = ["ArchiveLimits", "JobDefinition", "safe_extract", "validate_job_archive"]

GiB = 1024**3
_CHUNK = 1024 * 1024
#: Files read whole for validation (meta.json, app configs) may not exceed this size.
CONFIG_READ_MAX_BYTES = 16 * 1024 * 1024
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_RATIO_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied to an uploaded job archive (all configurable by the server)."""

    #: Largest accepted archive (compressed bytes on the wire).
    max_upload_bytes: int = 2 * GiB
    #: Largest sum of the entries' uncompressed sizes, declared or real.
    max_uncompressed_bytes: int = 8 * GiB
    #: Most entries (files and folders) in one archive.
    max_entries: int = 10_000
    #: Optional cap on uncompressed/compressed size per entry of at least 1 MiB.
    max_ratio: float | None = None
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


def _entry_kind_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    # Mode bits are honoured by unzip tools on Unix; check them whatever create_system says.
    if mode:
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            return "is a symlink"
        if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            return "is a device, FIFO or socket"
        if kind == stat.S_IFDIR and not info.filename.endswith("/"):
            return "is a folder entry whose name does not end with '/'"
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            return "has an unknown file type"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.compress_type not in _METHODS:
        return f"uses unsupported compression method {info.compress_type}"
    if info.filename.endswith("/") and info.file_size:
        return "is a folder entry with content"
    return None


def _scan(zf: zipfile.ZipFile, limits: ArchiveLimits) -> _Scan:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise _reject(f"archive has {len(infos)} entries; at most {limits.max_entries} are allowed")
    seen: dict[str, str] = {}
    files: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    declared = 0
    for info in infos:
        name = info.orig_filename  # zipfile truncates .filename at a NUL; check the original
        problem = path_problem(name) or _entry_kind_problem(info)
        if problem:
            verb = "" if problem.startswith(("is ", "has ", "uses ")) else "has "
            raise _reject(f"archive entry {name!r} {verb}{problem}", name)
        key = name.rstrip("/").casefold()
        if key in seen:
            other = seen[key]
            what = (
                "is a duplicate"
                if other.rstrip("/") == name.rstrip("/")
                else (f"differs from entry {other!r} only by case")
            )
            raise _reject(f"archive entry {name!r} {what}", name)
        seen[key] = name
        if name.endswith("/"):
            folders.add(key)
            continue
        files[name] = info
        declared += info.file_size
        if declared > limits.max_uncompressed_bytes:
            raise _reject(
                f"archive declares more than {limits.max_uncompressed_bytes} uncompressed bytes "
                f"(reached at entry {name!r})",
                name,
            )
        if (
            limits.max_ratio is not None
            and info.file_size >= _RATIO_MIN_BYTES
            and info.file_size > limits.max_ratio * max(info.compress_size, 1)
        ):
            raise _reject(
                f"archive entry {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}"
                f" times; at most {limits.max_ratio:g} is allowed",
                name,
            )
    file_keys = {n.casefold() for n in files}
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            ancestor = "/".join(parts[:depth]).casefold()
            if ancestor in file_keys:
                raise _reject(f"archive entry {name!r} lies inside a file of the same path", name)
    return _Scan(_layout_prefix(files, folders, seen), files, declared)


def _layout_prefix(
    files: dict[str, zipfile.ZipInfo], folders: set[str], seen: dict[str, str]
) -> str:
    if META_FILE in files:
        return ""
    tops = sorted({name.split("/", 1)[0] for name in seen.values()})
    if len(tops) == 1:
        prefix = tops[0] + "/"
        if prefix + META_FILE in files:
            return prefix
    shown = ", ".join(tops[:5]) + (", ..." if len(tops) > 5 else "")
    raise _reject(
        f"archive has no {META_FILE} at its root and is not one job folder holding "
        f"{META_FILE} (top-level entries: {shown or 'none'})"
    )


def _corrupt(name: str, exc: BaseException) -> InvalidJobDefinition:
    return _reject(
        f"archive entry {name!r} is corrupt or inflates beyond its declared size ({exc})", name
    )


def _copy_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, sink: object | None, budget: list[int]
) -> None:
    """Inflate one entry through a counting reader.

    ``budget`` is ``[bytes the total cap has left, the cap]``; ``sink`` an fd or None.
    """
    name = info.orig_filename
    written = 0
    try:
        with zf.open(info) as src:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                budget[0] -= len(chunk)
                if written > info.file_size:
                    raise _reject(
                        f"archive entry {name!r} inflates beyond its declared {info.file_size} "
                        "bytes",
                        name,
                    )
                if budget[0] < 0:
                    raise _reject(
                        f"archive inflates beyond the cap of {budget[1]} uncompressed bytes at "
                        f"entry {name!r}",
                        name,
                    )
                if sink is not None:
                    os.write(sink, chunk)  # type: ignore[arg-type]
    except InvalidJobDefinition:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        raise _corrupt(name, exc) from None
    if written != info.file_size:
        raise _corrupt(name, EOFError(f"{written} of {info.file_size} bytes"))


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"


def _check_placement(zf: zipfile.ZipFile, zip_path: Path, files: list[zipfile.ZipInfo]) -> None:
    """Every entry's local header is where the central directory says, names the same
    file, and its data lies inside the archive without overlapping the next entry."""
    entries = sorted(files, key=lambda i: i.header_offset)
    end_of_data = zf.start_dir  # type: ignore[attr-defined]
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
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        raise _corrupt(name, exc) from None
    if len(data) != info.file_size:
        raise _corrupt(name, EOFError(f"{len(data)} of {info.file_size} bytes"))
    return data


@contextmanager
def _open_checked(zip_path: Path, limits: ArchiveLimits) -> Iterator[zipfile.ZipFile]:
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
        yield zf


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
    with _open_checked(zip_path, limits) as zf:
        scan = _scan(zf, limits)
        if limits.verify_contents:
            _check_placement(zf, zip_path, list(scan.files.values()))
            budget = [limits.max_uncompressed_bytes, limits.max_uncompressed_bytes]
            for info in scan.files.values():
                if info.compress_type == zipfile.ZIP_STORED:
                    _check_stored(info, budget)
                else:
                    _copy_entry(zf, info, None, budget)
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
    with _open_checked(zip_path, limits) as zf:
        scan = _scan(zf, limits)
        definition = _definition(zf, scan)
        staging = dest.parent / f".{dest.name}.extract-{secrets.token_hex(6)}"
        os.mkdir(staging, 0o700)
        try:
            budget = [limits.max_uncompressed_bytes, limits.max_uncompressed_bytes]
            made: set[Path] = {staging}
            for name, info in scan.files.items():
                target = staging.joinpath(*name[len(scan.prefix) :].split("/"))
                for parent in reversed(target.parents):
                    if parent in made or staging not in (parent, *parent.parents):
                        continue
                    os.mkdir(parent, 0o755)
                    made.add(parent)
                flags = (
                    os.O_WRONLY
                    | os.O_CREAT
                    | os.O_EXCL
                    | os.O_NOFOLLOW
                    | getattr(os, "O_CLOEXEC", 0)
                )
                fd = os.open(target, flags, 0o644)
                try:
                    _copy_entry(zf, info, fd, budget)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(folder)
            os.rename(staging, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return definition
