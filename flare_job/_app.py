"""One app folder of a job being built: its files, gathered before anything is written.

Executors and workflows add what they need (:meth:`AppContent.add_file`,
:meth:`AppContent.add_tree`, :meth:`AppContent.set_client_config`); :meth:`AppContent.write`
puts it all into a folder. Two objects that want the same path with different content are
refused at once, naming the path, so one app never silently keeps the wrong file.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_protocol.app_config import CLIENT_CONFIG, SERVER_CONFIG
from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.ignore_files import IgnoreRules
from flare_protocol.job_format import path_problem

__all__ = ["AppContent", "Content"]

#: A file's content: a local file to copy, the bytes themselves, or a function that
#: writes the file at the path it is given (a model saved with ``save_params``).
Content = Path | bytes | Callable[[Path], object]

#: Folders and suffixes never copied from a user's tree into a job (caches, not code).
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".ipynb_checkpoints"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def json_file_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


@dataclass
class AppContent:
    """The files of one app folder: relative path -> :data:`Content`."""

    name: str
    files: dict[str, Content] = field(default_factory=dict)

    def add_file(self, relpath: str, source: Content) -> None:
        """Put ``source`` at ``relpath`` (``custom/train.py``) inside the app.

        Raises:
            InvalidJobDefinition: the path is unsafe, or already holds different content.
        """
        problem = path_problem(relpath)
        if problem or relpath.endswith("/"):
            raise InvalidJobDefinition(
                f"app {self.name!r}: file {relpath!r} has {problem or 'a trailing /'}",
                path=relpath,
            )
        if isinstance(source, (str, os.PathLike)):
            source = Path(source).resolve()
        previous = self.files.get(relpath)
        if previous is not None and previous != source:
            raise InvalidJobDefinition(
                f"app {self.name!r}: two objects put different content at {relpath!r} "
                f"({_describe(previous)} and {_describe(source)}); rename one of them",
                path=relpath,
            )
        self.files[relpath] = source

    def add_tree(
        self, folder: Path, under: str = "", *, skip: frozenset[str] = frozenset()
    ) -> None:
        """Copy every regular file below ``folder`` to ``under/...`` (caches, and what the
        folder's ignore files list, left out).

        ``skip`` holds paths relative to ``folder`` to leave out.

        Raises:
            InvalidJobDefinition: a symlink that leaves ``folder``, or a special file.
        """
        root = Path(folder).resolve()
        ignore = IgnoreRules(root)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            ignore.prune(dirpath, dirnames, filenames)  # .flareignore, .ignore, .fednignore
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
            for name in sorted(filenames):
                if name.endswith(_SKIPPED_SUFFIXES):
                    continue
                full = Path(dirpath, name)
                rel = full.relative_to(root).as_posix()
                if rel in skip:
                    continue
                real = Path(os.path.realpath(full))
                if os.path.commonpath([root, real]) != str(root) or not stat.S_ISREG(
                    os.stat(real).st_mode
                ):
                    raise InvalidJobDefinition(
                        f"{full}: not a regular file inside {root} (a symlink that leaves "
                        "it, or a device); copy the file in instead",
                        path=str(full),
                    )
                self.add_file(f"{under}/{rel}" if under else rel, full)

    def set_client_config(self, config: Mapping[str, Any]) -> None:
        """The app's ``config/config_fed_client.json`` (one executor per app)."""
        if CLIENT_CONFIG in self.files:
            raise InvalidJobDefinition(
                f"app {self.name!r} already has an executor; a site runs one executor per job",
                path=CLIENT_CONFIG,
            )
        self.add_file(CLIENT_CONFIG, json_file_bytes(config))

    def set_server_config(self, config: Mapping[str, Any]) -> None:
        """The app's ``config/config_fed_server.json`` (the workflow)."""
        self.add_file(SERVER_CONFIG, json_file_bytes(config))

    def write(self, folder: Path) -> None:
        """Write every file below ``folder`` (which must not exist yet)."""
        folder.mkdir(parents=True)
        for relpath, source in sorted(self.files.items()):
            target = folder / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                target.write_bytes(source)
            elif isinstance(source, Path):
                shutil.copyfile(source, target)
                if os.stat(source).st_mode & 0o111:
                    target.chmod(0o755)
            else:
                source(target)


def _describe(source: Content) -> str:
    if isinstance(source, Path):
        return str(source)
    if isinstance(source, bytes):
        return f"{len(source)} generated bytes"
    return f"a file written by {getattr(source, '__qualname__', source)!r}"
