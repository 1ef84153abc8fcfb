"""Ignore files: which files of a job folder (or compute package) are part of the job.

A folder may hold ``.flareignore``, ``.ignore`` (Scaleout's name) or ``.fednignore``
(FEDn's): patterns of files to leave out of the job, one per line, in the subset of
``.gitignore`` rules documented in docs/jobs.md. The patterns of an ignore file apply to
the files below the folder that holds it, so a compute package's ``.ignore`` keeps working
once the package is an app folder inside a job. ``flare job pack``, ``flare job validate``,
``Session.submit_job`` and the Job API's ``PackageRunner`` all list a folder's files with
the same rules (:class:`IgnoreRules` during an :func:`os.walk`, or :func:`job_files`).

Matching: a pattern without a ``/`` (``__pycache__``, ``*.tgz``) matches a file or folder
name at any depth; a pattern with a ``/`` (``data/raw``, ``/seed.npz``) matches the path
relative to the ignore file's folder. ``*`` and ``?`` do not cross ``/``, ``**`` does; a
trailing ``/`` matches folders only; ``!`` re-includes what an earlier pattern left out
(not below a folder left out: its contents are never looked at). The last matching
pattern wins, and a deeper folder's patterns come after its parents'.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from flare_protocol.errors import InvalidJobDefinition

__all__ = ["IGNORE_FILES", "IgnoreRules", "job_files", "parse_ignore_file"]

#: File names read for patterns, in every folder of a job.
IGNORE_FILES = (".flareignore", ".ignore", ".fednignore")
_MAX_IGNORE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class _Rule:
    base: str  # folder of the ignore file, relative to the root ("" for the root)
    regex: re.Pattern[str]
    anchored: bool  # match the path below ``base`` (else the name alone)
    dir_only: bool
    negated: bool
    text: str

    def matches(self, relpath: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.base:
            if not relpath.startswith(self.base + "/"):
                return False
            relpath = relpath[len(self.base) + 1 :]
        subject = relpath if self.anchored else relpath.rsplit("/", 1)[-1]
        return self.regex.fullmatch(subject) is not None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A ``.gitignore`` glob as a regex: ``*``/``?`` stay within one name, ``**`` does not."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 1
        elif char == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negated = body.startswith("!")
            body = body[1:] if negated else body
            body = body.replace("\\", "\\\\")
            if body.startswith("^"):
                body = "\\" + body
            out.append(f"[{'^' if negated else ''}{body}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def parse_ignore_file(text: str, base: str = "") -> list[_Rule]:
    """The rules of one ignore file found in folder ``base`` (relative to the walk's root)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        line = line.lstrip("/")
        if not line:
            continue
        rules.append(_Rule(base, _glob_regex(line), anchored, dir_only, negated, raw.strip()))
    return rules


class IgnoreRules:
    """The patterns of the ignore files met so far while walking one folder top-down."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._rules: list[_Rule] = []

    def ignored(self, relpath: str, *, is_dir: bool) -> bool:
        """Whether ``relpath`` (relative to the root, ``/``-separated) is left out."""
        verdict = False
        for rule in self._rules:
            if rule.negated == verdict and rule.matches(relpath, is_dir):
                verdict = not rule.negated
        return verdict

    def prune(
        self, dirpath: str | os.PathLike[str], dirnames: list[str], filenames: list[str]
    ) -> None:
        """For ``os.walk(root)`` (top-down): read ``dirpath``'s ignore files, then remove the
        ignored names from ``dirnames`` (so the walk skips them) and ``filenames``, in place.

        Raises:
            InvalidJobDefinition: an ignore file is larger than 1 MiB or unreadable.
        """
        here = Path(dirpath)
        rel_dir = here.relative_to(self.root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in IGNORE_FILES:
            if name in filenames and (here / name).is_file():
                self._rules += parse_ignore_file(_read_ignore_file(here / name), rel_dir)
        prefix = f"{rel_dir}/" if rel_dir else ""
        dirnames[:] = [d for d in dirnames if not self.ignored(prefix + d, is_dir=True)]
        filenames[:] = [f for f in filenames if not self.ignored(prefix + f, is_dir=False)]


def _read_ignore_file(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_IGNORE_BYTES + 1)
    except OSError as exc:
        raise InvalidJobDefinition(
            f"cannot read ignore file {path}: {exc}", path=str(path)
        ) from exc
    if len(data) > _MAX_IGNORE_BYTES:
        raise InvalidJobDefinition(
            f"ignore file {path} is larger than {_MAX_IGNORE_BYTES} bytes", path=str(path)
        )
    return data.decode("utf-8", errors="replace")


def job_files(root: str | os.PathLike[str]) -> list[str]:
    """The files of folder ``root`` that are part of the job: relative ``/``-separated
    paths of every non-folder entry the ignore files leave in, sorted.

    Symlinked folders are listed as entries, not followed; callers check entry types.
    """
    top = Path(root)
    rules = IgnoreRules(top)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        rules.prune(dirpath, dirnames, filenames)
        here = Path(dirpath)
        for name in dirnames + filenames:
            full = here / name
            if name in filenames or full.is_symlink():
                found.append(full.relative_to(top).as_posix())
    return sorted(found)
