"""A pseudo-terminal driver for tests: run a program on a real pty, type, expect text.

Only the standard library: ``os.openpty``, the child made a session leader with the pty as
its controlling terminal (so Ctrl-C typed while a command runs becomes SIGINT, as in a
real terminal), and output read with ``poll``. Escape sequences are stripped before
matching, so tests read what a person would see (roughly: no screen emulation).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-B]|\x1b[=>78]|\r"
)


def plain(text: str) -> str:
    """``text`` without terminal escape sequences and carriage returns."""
    return _ESCAPES.sub("", text)


_TAKE_TERMINAL_THEN_EXEC = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class Terminal:
    """``argv`` running on a ``cols`` x ``rows`` pseudo-terminal."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        cols: int = 120,
        rows: int = 40,
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        # The pty becomes the controlling terminal in the child after exec, not in a
        # preexec_fn: Python code between fork and exec in a process running threads
        # (the in-process test server's grpc) crashed the child now and then.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL_THEN_EXEC, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)},
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.raw = ""
        self._seen = 0

    def send(self, keys: str) -> None:
        """Type ``keys``: ``\\t`` Tab, ``\\r`` Enter, ``\\x03`` Ctrl-C, ``\\x04`` Ctrl-D."""
        os.write(self.master, keys.encode())

    def _read(self, timeout: float) -> bool:
        poller = select.poll()  # not select(): no limit on the descriptor's number
        poller.register(self.master, select.POLLIN)
        ready = poller.poll(timeout * 1000)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the child exited and closed the pty
            return False
        if not data:
            return False
        self.raw += data.decode("utf-8", errors="replace")
        return True

    @property
    def screen(self) -> str:
        """Everything printed so far, escapes stripped."""
        return plain(self.raw)

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in output not yet matched; return it.

        Raises:
            AssertionError: with the recent output, when it did not appear in time.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.screen, self._seen)
            if found:
                self._seen = found.end()
                return found
            remaining = deadline - time.monotonic()
            exited = self.proc.poll() is not None
            if remaining <= 0 or (not self._read(min(remaining, 0.2)) and exited):
                tail = self.screen[self._seen :][-3000:]
                ended = f" (the program exited with {self.proc.returncode})" if exited else ""
                raise AssertionError(
                    f"{pattern!r} did not appear{ended}; the terminal shows:\n{tail}"
                )

    def wait(self, timeout: float = 20.0) -> int:
        """The exit code, once the program ended (reading its last output)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)
