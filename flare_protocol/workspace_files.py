"""Read-only file commands confined to a workspace: ls, cat, head, tail, grep, pwd.

The server answers them for its own workspace and each site for its own (the server
forwards an admin's command only after checking the admin's right); both run this code, so
the confinement rules and the result shapes are the same everywhere:

=============  =====================================  =========================================
command        args                                   result
=============  =====================================  =========================================
ls             ``path="."``, ``long=false``           ``{"entries": [...], "text", "truncated"}``
cat            ``path``                               ``{"text", "truncated"}``
head / tail    ``path``, ``lines=10``                 ``{"text", "truncated"}``
grep           ``path``, ``pattern`` (1..256 chars),  ``{"text", "truncated"}``
               ``ignore_case``, ``regex``
pwd                                                   ``{"text": workspace}``
=============  =====================================  =========================================

Paths are relative to the workspace: never absolute, never ``..``, no backslash or
control character, resolved (symlinks included) and checked to stay inside; files named
``*.key`` are never shown. Text is capped at :data:`MAX_TEXT_BYTES` and :data:`MAX_LINES`,
a listing at :data:`MAX_LINES` entries (``truncated`` says so). Bad arguments raise
:class:`~flare_protocol.errors.InvalidArgumentError`.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path, PurePosixPath
from typing import Any

from flare_protocol.errors import InvalidArgumentError

__all__ = ["FILE_COMMANDS", "MAX_LINES", "MAX_TEXT_BYTES", "confine", "run_file_command"]

FILE_COMMANDS = frozenset({"ls", "cat", "head", "tail", "grep", "pwd"})
#: Largest text a file command returns (the reply must stay well under 4 MiB).
MAX_TEXT_BYTES = 1024 * 1024
MAX_LINES = 10_000


def run_file_command(
    root: Path, name: str, args: dict[str, Any], *, where: str = "workspace"
) -> dict[str, Any]:
    """Run file command ``name`` with ``args`` inside ``root`` (``where`` names it in errors).

    Raises:
        InvalidArgumentError: an unknown command, a bad argument or a path that leaves root.
        OSError: the file could not be read.
    """
    root = Path(root).resolve()
    if name not in FILE_COMMANDS:
        raise InvalidArgumentError(
            f"unknown file command {name!r}; known: {', '.join(sorted(FILE_COMMANDS))}"
        )
    if name == "pwd":
        return {"text": str(root)}
    rel = _str(args, "path", "." if name == "ls" else None)
    path = confine(root, rel, where=where)
    if name == "ls":
        return _ls(path, bool(args.get("long", False)))
    if not path.is_file():
        raise InvalidArgumentError(f"{rel!r} is not a regular file", path=rel)
    if name == "cat":
        return _cat(path)
    if name == "head":
        return _head(path, _lines(args))
    if name == "tail":
        return _tail(path, _lines(args))
    return _grep(
        path,
        _str(args, "pattern"),
        bool(args.get("ignore_case", False)),
        bool(args.get("regex", False)),
    )


def confine(root: Path, rel: str, *, where: str = "workspace") -> Path:
    """``rel`` resolved inside ``root``; InvalidArgumentError for anything that leaves it."""
    if rel in ("", "."):
        return root
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise InvalidArgumentError("path contains control characters", path=rel)
    if "\\" in rel:
        raise InvalidArgumentError(f"path {rel!r} contains a backslash", path=rel)
    pure = PurePosixPath(rel)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", rel):
        raise InvalidArgumentError(
            f"path {rel!r} is absolute; give a path relative to the {where}", path=rel
        )
    if ".." in pure.parts:
        raise InvalidArgumentError(f"path {rel!r} leaves the {where} ('..')", path=rel)
    try:
        resolved = (root / pure).resolve(strict=True)
    except FileNotFoundError:
        raise InvalidArgumentError(f"no such file or folder: {rel}", path=rel) from None
    except (OSError, RuntimeError) as exc:
        raise InvalidArgumentError(f"cannot resolve {rel!r}: {exc}", path=rel) from None
    if not resolved.is_relative_to(root):
        raise InvalidArgumentError(
            f"path {rel!r} resolves outside the {where} (a symlink out)", path=rel
        )
    if resolved.suffix == ".key":
        raise InvalidArgumentError(f"{rel!r} is a private key; it is never shown", path=rel)
    return resolved


def _str(args: dict[str, Any], key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise InvalidArgumentError(f"argument '{key}' must be a string, got {value!r}")
    return value


def _lines(args: dict[str, Any]) -> int:
    value = args.get("lines", 10)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LINES:
        raise InvalidArgumentError(
            f"argument 'lines' must be an integer 1..{MAX_LINES}, got {value!r}"
        )
    return value


def _cat(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        data = fh.read(MAX_TEXT_BYTES + 1)
    return {
        "text": data[:MAX_TEXT_BYTES].decode("utf-8", errors="replace"),
        "truncated": len(data) > MAX_TEXT_BYTES,
    }


def _head(path: Path, n: int) -> dict[str, Any]:
    out: list[str] = []
    size = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if len(out) >= n:
                break
            if size + len(line) > MAX_TEXT_BYTES:
                return {"text": "".join(out), "truncated": True}
            out.append(line)
            size += len(line)
    return {"text": "".join(out), "truncated": False}


def _tail(path: Path, n: int) -> dict[str, Any]:
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        start = max(0, end - 4 * MAX_TEXT_BYTES)
        fh.seek(start)
        data = fh.read()
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if start > 0 and lines:
        lines = lines[1:]  # the first one is probably cut
    text = "".join(lines[-n:])
    return {"text": text[-MAX_TEXT_BYTES:], "truncated": len(text) > MAX_TEXT_BYTES}


def _grep(path: Path, pattern: str, ignore_case: bool, regex: bool) -> dict[str, Any]:
    if not pattern or len(pattern) > 256:
        raise InvalidArgumentError("argument 'pattern' must have 1..256 characters")
    try:
        compiled = re.compile(
            pattern if regex else re.escape(pattern), re.IGNORECASE if ignore_case else 0
        )
    except re.error as exc:
        raise InvalidArgumentError(f"bad pattern {pattern!r}: {exc}") from None
    out: list[str] = []
    size = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if compiled.search(line):
                entry = f"{number}:{line}"
                if len(out) >= MAX_LINES or size + len(entry) > MAX_TEXT_BYTES:
                    return {"text": "".join(out), "truncated": True}
                out.append(entry)
                size += len(entry)
    return {"text": "".join(out), "truncated": False}


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "file" if stat.S_ISREG(mode) else "other"


def _ls(path: Path, long: bool) -> dict[str, Any]:
    children = sorted(path.iterdir()) if path.is_dir() else [path]
    entries: list[dict[str, Any]] = []
    for child in children[:MAX_LINES]:
        st = os.lstat(child)
        entries.append(
            {
                "name": child.name,
                "type": _kind(st.st_mode),
                "size": st.st_size,
                "mtime": st.st_mtime,
            }
        )
    if long:
        text = "".join(
            f"{e['type']:<5} {e['size']:>12} "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(e['mtime']))} {e['name']}\n"
            for e in entries
        )
    else:
        text = "".join(f"{e['name']}{'/' if e['type'] == 'dir' else ''}\n" for e in entries)
    return {"entries": entries, "text": text, "truncated": len(children) > MAX_LINES}
