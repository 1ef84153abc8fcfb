"""Safe extraction of a job's app archive on a site (a zip of one app folder).

Theory of operation. The archive comes from the server, but the site trusts no name in it:
the server checked the job at submission, and this is the second, independent check at
the place where files are actually written. :mod:`flare_protocol.safe_zip` does the work:
every entry is checked before anything is written (safe relative name, regular file or
folder only, not encrypted, a known compression method, no duplicate even by case, no file
used as a folder, capped entry count and declared size); then only regular files are
written into a fresh staging folder beside the destination (``O_EXCL | O_NOFOLLOW``), each
inflated through a counting reader that stops at its declared size and at the total cap,
fsynced, and the staging folder is renamed into place: the app folder is complete or absent.

The archive holds the app folder's content at its root (``config/...``, ``custom/...``);
an archive whose entries all sit in one top-level folder holding ``config/`` is accepted
too, and that folder is stripped.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.safe_zip import extract_atomically, scan_entries

__all__ = ["AppLimits", "extract_app"]


@dataclass(frozen=True)
class AppLimits:
    """Caps on an app archive a site extracts.

    No compression-ratio cap: the server re-zips an app it has validated (the ratio was
    checked at upload), and a file the user sent stored, e.g. an all-zero model, may deflate
    far beyond any sane ratio in that zip; the total cap still bounds what is written.
    """

    max_entries: int = 10_000
    max_uncompressed_bytes: int = 8 * 1024**3


def _reject(message: str, entry: str | None = None) -> InvalidJobDefinition:
    return InvalidJobDefinition(message, path=entry) if entry else InvalidJobDefinition(message)


def _prefix(files: dict[str, zipfile.ZipInfo]) -> str:
    tops = {name.split("/", 1)[0] for name in files}
    if "config" in tops or len(tops) != 1:
        return ""
    (top,) = tops
    if any(name.startswith(f"{top}/config/") for name in files):
        return f"{top}/"
    return ""


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
        entries = scan_entries(
            zf,
            max_entries=limits.max_entries,
            max_uncompressed_bytes=limits.max_uncompressed_bytes,
            reject=_reject,
            what="app archive",
        )
        extract_atomically(
            zf,
            entries.files,
            dest,
            _reject,
            max_uncompressed_bytes=limits.max_uncompressed_bytes,
            prefix=_prefix(entries.files),
            what="app archive",
        )
    return len(entries.files)
