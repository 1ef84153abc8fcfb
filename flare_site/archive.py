"""Safe extraction of a job's app archive on a site (a zip of one app folder).

Theory of operation. The archive comes from the server, but the site trusts no name in it:
the server checked the job at submission, and this is the second, independent check at
the place where files are actually written. Before anything is written, every entry is
checked: a safe relative name (:func:`flare_protocol.job_format.path_problem`: no ``..``,
absolute path, drive letter, backslash or control character), a regular file or folder
(no symlink, device, FIFO or socket in the Unix mode bits), not encrypted, a known
compression method, no duplicate (also case-insensitively), no file used as a folder; the
entry count and the declared total size are capped. Then only regular files are written,
into a fresh staging folder beside the destination (``O_EXCL | O_NOFOLLOW``), each one
inflated through a counting reader that stops at its declared size and at the total cap
(a zip bomb that lies about its sizes is refused without being materialised), fsynced,
and the staging folder is renamed into place: the app folder is complete or absent.

The archive holds the app folder's content at its root (``config/...``, ``custom/...``);
an archive whose entries all sit in one top-level folder holding ``config/`` is accepted
too, and that folder is stripped.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.job_format import path_problem

__all__ = ["AppLimits", "extract_app"]

_CHUNK = 1024 * 1024
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


@dataclass(frozen=True)
class AppLimits:
    """Caps on an app archive a site extracts."""

    max_entries: int = 10_000
    max_uncompressed_bytes: int = 8 * 1024**3


def _reject(message: str, entry: str | None = None) -> InvalidJobDefinition:
    return InvalidJobDefinition(message, path=entry) if entry else InvalidJobDefinition(message)


def _kind_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if mode:
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            return "is a symlink"
        if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            return "is a device, FIFO or socket"
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            return "has an unknown file type"
        if kind == stat.S_IFDIR and not info.orig_filename.endswith("/"):
            return "is a folder whose name does not end with '/'"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.compress_type not in _METHODS:
        return f"uses unsupported compression method {info.compress_type}"
    if info.orig_filename.endswith("/") and info.file_size:
        return "is a folder entry with content"
    return None


def _check_entries(zf: zipfile.ZipFile, limits: AppLimits) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise _reject(f"app archive has {len(infos)} entries; at most {limits.max_entries}")
    seen: dict[str, str] = {}
    files: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.orig_filename  # .filename is cut at a NUL; check what the archive says
        problem = path_problem(name)
        if problem:
            raise _reject(f"app archive entry {name!r} has {problem}", name)
        problem = _kind_problem(info)
        if problem:
            raise _reject(f"app archive entry {name!r} {problem}", name)
        key = name.rstrip("/").casefold()
        if key in seen:
            raise _reject(f"app archive entry {name!r} duplicates {seen[key]!r}", name)
        seen[key] = name
        if name.endswith("/"):
            continue
        files[name] = info
        total += info.file_size
        if total > limits.max_uncompressed_bytes:
            raise _reject(
                f"app archive declares more than {limits.max_uncompressed_bytes} bytes "
                f"(reached at {name!r})",
                name,
            )
    keys = {n.casefold() for n in files}
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]).casefold() in keys:
                raise _reject(f"app archive entry {name!r} lies inside a file", name)
    return files


def _prefix(files: dict[str, zipfile.ZipInfo]) -> str:
    tops = {name.split("/", 1)[0] for name in files}
    if "config" in tops or len(tops) != 1:
        return ""
    (top,) = tops
    if any(name.startswith(f"{top}/config/") for name in files):
        return f"{top}/"
    return ""


def _copy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, fd: int, budget: list[int]) -> None:
    name = info.orig_filename
    written = 0
    try:
        with zf.open(info) as src:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                budget[0] -= len(chunk)
                if written > info.file_size or budget[0] < 0:
                    raise _reject(
                        f"app archive entry {name!r} inflates beyond its declared size "
                        "or the archive's cap",
                        name,
                    )
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
    except InvalidJobDefinition:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as exc:
        raise _reject(f"app archive entry {name!r} is corrupt ({exc})", name) from None
    if written != info.file_size:
        raise _reject(f"app archive entry {name!r} is truncated", name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def extract_app(zip_path: Path, dest: Path, limits: AppLimits = AppLimits()) -> int:
    """Check every entry of ``zip_path``, then extract it into ``dest`` (must not exist).

    Returns the number of files written. On any error nothing is left at ``dest``.

    Raises:
        InvalidJobDefinition: naming the offending entry (attribute ``path``).
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise _reject(f"cannot extract the app into {dest}: it already exists")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _reject(f"the app archive is not a readable zip ({exc})") from None
    with zf:
        files = _check_entries(zf, limits)
        prefix = _prefix(files)
        staging = dest.with_name(f".{dest.name}.extract-{os.getpid()}-{id(zf):x}")
        os.mkdir(staging, 0o700)
        try:
            budget = [limits.max_uncompressed_bytes]
            made = {staging}
            for name, info in files.items():
                target = staging.joinpath(*name[len(prefix) :].split("/"))
                for parent in reversed(target.parents):
                    if parent in made or staging not in parent.parents:
                        continue
                    os.mkdir(parent, 0o755)
                    made.add(parent)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
                try:
                    _copy(zf, info, fd, budget)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(folder)
            os.chmod(staging, 0o755)
            os.rename(staging, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return len(files)
