"""Checked extraction of zip archives that come from elsewhere: job uploads, apps, results.

Theory of operation. An archive is hostile until proven otherwise, wherever it is opened
(the server checks a job upload, a site checks the app the server sends it, the Session
checks a result): each place runs the same checks, so no place relies on another.

:func:`scan_entries` checks the directory before anything is read or written: the entry
count and the declared uncompressed total against caps, and every entry: a safe relative
name (:func:`flare_protocol.job_format.path_problem`: no ``..``, absolute path, drive
letter, backslash or control character), a regular file or folder (no symlink, device,
FIFO or socket in the Unix mode bits, whatever system wrote the archive), not encrypted,
a known compression method, no duplicate (also case-insensitively, for case-insensitive
file systems), and no file used as a folder. :func:`copy_entry` inflates one entry through
a counting reader that stops at its declared size and at the total cap, so a zip bomb
that lies about its sizes is refused without being materialised; zipfile checks the CRC
at the end. :func:`write_entries` writes only regular files (``O_EXCL | O_NOFOLLOW``,
never through a link) into a folder; :func:`extract_atomically` does so in a fresh staging
folder beside the destination and renames it into place: the result is complete or absent.

Errors are built by the caller's ``reject(message, entry)``, so each place raises its own
exception type; messages read ``<what> entry '<name>' <problem>``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flare_protocol._fsync import fsync_dir
from flare_protocol.job_format import path_problem

__all__ = [
    "CORRUPT",
    "METHODS",
    "Entries",
    "Reject",
    "copy_entry",
    "corrupt",
    "entry_problem",
    "extract_atomically",
    "scan_entries",
    "write_entries",
]

#: Compression methods zipfile can read; anything else is refused up front.
METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_CHUNK = 1024 * 1024
#: What zipfile and the decompressors raise for a damaged entry (UnicodeDecodeError: a
#: local header whose name is not in the encoding its flags declare).
CORRUPT = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    UnicodeDecodeError,
)

#: Builds the caller's exception: ``reject(message, entry_name_or_None)``.
Reject = Callable[[str, "str | None"], Exception]


@dataclass(frozen=True)
class Entries:
    """An archive's checked directory."""

    #: Regular files: name as in the archive -> entry.
    files: dict[str, zipfile.ZipInfo]
    #: Folder entries, case-folded, without the trailing ``/``.
    folders: frozenset[str]
    #: Every entry's name as in the archive (files and folders).
    names: tuple[str, ...]
    #: Sum of the files' declared uncompressed sizes.
    declared: int


def entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why this entry must not be extracted (a phrase: ``is a symlink``), or None."""
    name = info.orig_filename  # zipfile cuts .filename at a NUL; check what the archive says
    problem = path_problem(name)
    if problem:
        return f"has {problem}"
    mode = info.external_attr >> 16
    if mode:  # unzip tools on Unix honour these bits whatever create_system says
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            return "is a symlink"
        if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            return "is a device, FIFO or socket"
        if kind == stat.S_IFDIR and not name.endswith("/"):
            return "is a folder entry whose name does not end with '/'"
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            return "has an unknown file type"
    if info.header_offset < 0:  # zipfile shifts offsets by the bytes it thinks are missing
        return "is damaged: the directory places it before the archive's start"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.compress_type not in METHODS:
        return f"uses unsupported compression method {info.compress_type}"
    if name.endswith("/") and info.file_size:
        return "is a folder entry with content"
    return None


def scan_entries(
    zf: zipfile.ZipFile,
    *,
    max_entries: int,
    max_uncompressed_bytes: int,
    reject: Reject,
    what: str = "archive",
) -> Entries:
    """Check every entry of ``zf``'s directory (see the module docstring).

    Raises:
        whatever ``reject`` builds, naming the entry at fault.
    """
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise reject(f"{what} has {len(infos)} entries; at most {max_entries} are allowed", None)
    seen: dict[str, str] = {}
    files: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    declared = 0
    for info in infos:
        name = info.orig_filename
        problem = entry_problem(info)
        if problem:
            raise reject(f"{what} entry {name!r} {problem}", name)
        key = name.rstrip("/").casefold()
        if key in seen:
            other = seen[key]
            twin = (
                "is a duplicate"
                if other.rstrip("/") == name.rstrip("/")
                else f"differs from entry {other!r} only by case"
            )
            raise reject(f"{what} entry {name!r} {twin}", name)
        seen[key] = name
        if name.endswith("/"):
            folders.add(key)
            continue
        files[name] = info
        declared += info.file_size
        if declared > max_uncompressed_bytes:
            raise reject(
                f"{what} declares more than {max_uncompressed_bytes} uncompressed bytes "
                f"(reached at entry {name!r})",
                name,
            )
    file_keys = {n.casefold() for n in files}
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]).casefold() in file_keys:
                raise reject(f"{what} entry {name!r} lies inside a file of the same path", name)
    return Entries(files, frozenset(folders), tuple(seen.values()), declared)


def copy_entry(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    fd: int | None,
    budget: list[int],
    reject: Reject,
    *,
    what: str = "archive",
) -> None:
    """Inflate one entry into ``fd`` (None: only check it), through a counting reader.

    ``budget`` is ``[bytes the total cap has left, the cap]`` and is spent as bytes arrive.
    """
    name = info.orig_filename
    written = 0
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                budget[0] -= len(chunk)
                if written > info.file_size:
                    raise reject(
                        f"{what} entry {name!r} inflates beyond its declared {info.file_size} "
                        "bytes",
                        name,
                    )
                if budget[0] < 0:
                    raise reject(
                        f"{what} inflates beyond the cap of {budget[1]} uncompressed bytes at "
                        f"entry {name!r}",
                        name,
                    )
                if fd is not None:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
    except CORRUPT as exc:
        raise corrupt(reject, what, name, exc) from None
    if written != info.file_size:
        raise corrupt(reject, what, name, EOFError(f"{written} of {info.file_size} bytes"))


def corrupt(reject: Reject, what: str, name: str, exc: BaseException) -> Exception:
    """The refusal of a damaged entry."""
    return reject(
        f"{what} entry {name!r} is corrupt or inflates beyond its declared size ({exc})", name
    )


def write_entries(
    zf: zipfile.ZipFile,
    files: Mapping[str, zipfile.ZipInfo],
    folder: Path,
    reject: Reject,
    *,
    budget: list[int],
    prefix: str = "",
    durable: bool = True,
    what: str = "archive",
) -> None:
    """Write ``files`` (checked by :func:`scan_entries`) into the existing ``folder``,
    each name without ``prefix``; only regular files, never through a link. ``durable``
    fsyncs every file and folder written."""
    made: set[Path] = {folder}
    for name, info in files.items():
        target = folder.joinpath(*name[len(prefix) :].split("/"))
        for parent in reversed(target.parents):
            if parent in made or folder not in parent.parents:
                continue
            os.mkdir(parent, 0o755)
            made.add(parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(target, flags, 0o644)
        try:
            copy_entry(zf, info, fd, budget, reject, what=what)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    if durable:
        for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(path)


def extract_atomically(
    zf: zipfile.ZipFile,
    files: Mapping[str, zipfile.ZipInfo],
    dest: Path,
    reject: Reject,
    *,
    max_uncompressed_bytes: int,
    prefix: str = "",
    what: str = "archive",
) -> None:
    """Write ``files`` into ``dest`` (which must not exist) through a staging folder beside
    it, fsynced and renamed into place: on any error nothing is left at ``dest``."""
    staging = dest.parent / f".{dest.name}.extract-{secrets.token_hex(6)}"
    os.mkdir(staging, 0o700)
    try:
        budget = [max_uncompressed_bytes, max_uncompressed_bytes]
        write_entries(zf, files, staging, reject, budget=budget, prefix=prefix, what=what)
        os.rename(staging, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
