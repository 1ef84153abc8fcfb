"""A small real file system for disk-full tests: tmpfs mounted on a folder, then removed.

``mount -t tmpfs`` needs root (or CAP_SYS_ADMIN); where it is refused the test is skipped
with the reason. The file system is always unmounted when the block ends, lazily if a
process still holds a file in it. :func:`fill` leaves a chosen number of bytes free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "free_bytes", "small_filesystem"]


@contextlib.contextmanager
def small_filesystem(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``path`` (created), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system for a disk-full test")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            "cannot mount a small tmpfs for a disk-full test (needs root or CAP_SYS_ADMIN): "
            + (done.stderr.strip() or f"mount exited with {done.returncode}")
        )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged write could still use on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """Write a ballast file in folder ``path`` until ``leave`` bytes are free; its path."""
    ballast = path / "ballast.bin"
    block = b"\0" * (1 << 20)
    with open(ballast, "ab") as fh:
        while (room := free_bytes(path) - leave) > 0:
            fh.write(block[: min(room, len(block))])
            fh.flush()
            os.fsync(fh.fileno())
    return ballast
