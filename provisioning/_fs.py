"""Writing secrets to disk: new files only, modes set from the first byte, one flush.

Theory of operation. A provisioning run writes thousands of small files. Calling
``fsync`` after each would dominate the run, so files are written into a temporary
folder without syncing, and :meth:`FileBatch.flush` makes them durable in one step
before the caller renames the folder into place (and syncs the parent). Until that
rename nothing is visible under its final name, so a crash leaves either the old
state or the new one, never a half-written kit.

Flush strategies (measured in ``bench/bench_provision.py``):

* ``syncfs``: one ``syncfs(2)`` of the workspace's file system (Linux); falls back to
  ``fsync`` of every file elsewhere;
* ``fsync``: ``fsync`` every written file and folder, in one batch after writing;
* ``each``: ``fsync`` each file as it is written (the naive way; for comparison);
* ``none``: no flush (benchmarks only; not crash-safe).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from flare_protocol._direct_io import replace_file
from flare_protocol._fsync import fsync_dir

__all__ = ["FLUSH_STRATEGIES", "FileBatch", "fsync_dir", "write_atomic"]

FLUSH_STRATEGIES = ("syncfs", "fsync", "each", "none")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file with ``mode``, fsync, rename, fsync folder."""
    replace_file(path, data, mode=mode, sync_folder=True)


def _syncfs(path: Path) -> bool:
    """``syncfs(2)`` on the file system holding ``path``; False where unavailable."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
    return True


class FileBatch:
    """Creates new files and folders, remembering them for one flush."""

    def __init__(self, strategy: str = "syncfs") -> None:
        if strategy not in FLUSH_STRATEGIES:
            raise ValueError(f"unknown flush strategy {strategy!r} ({', '.join(FLUSH_STRATEGIES)})")
        self.strategy = strategy
        self.files: list[Path] = []
        self.dirs: list[Path] = []

    def mkdir(self, path: Path, mode: int = 0o700) -> None:
        """Create a new folder with exactly ``mode``."""
        os.mkdir(path, mode)
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask
        self.dirs.append(path)

    def write(self, path: Path, data: bytes, mode: int = 0o600) -> None:
        """Create a new file (never overwrite, never follow a symlink) with ``mode``."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # exact mode whatever the umask; a key is never wider than 0600
            _write_fd(fd, data)
            if self.strategy == "each":
                os.fsync(fd)
        finally:
            os.close(fd)
        self.files.append(path)

    def flush(self, anchor: Path) -> None:
        """Make everything written so far durable (``anchor``: a folder on that file system)."""
        if self.strategy == "none":
            return
        if self.strategy == "each":
            for path in self.dirs:
                fsync_dir(path)
            return
        if self.strategy == "syncfs" and _syncfs(anchor):
            return
        for path in self.files:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for path in self.dirs:
            fsync_dir(path)
