"""User-code subprocesses: own process group, explicit environment, killable as a group.

Each process is started with ``start_new_session=True``, so it leads a new process group
(and session) whose id is its pid: killing the group reaches every child it forked, and a
terminal's Ctrl-C aimed at the site does not hit user code directly. Stopping sends
SIGTERM to the group, waits a grace period, then SIGKILLs the group, and always SIGKILLs
the group once more after the leader is gone, so grandchildren that ignore SIGTERM or
outlive their parent do not survive. Output is read in chunks (no line-length limit to
trip over), split into lines for the job log, and the last lines of stderr are kept for
error reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from flare_site.user_account import UserAccount

__all__ = ["OutputSink", "UserProcess", "safe_base_env"]

#: ``on_output(stream, line)`` with stream "stdout" or "stderr".
OutputSink = Callable[[str, str], None]

#: Variables copied from the site's environment into user code's; everything else is
#: explicit (the job's env, FLARE_* variables), so site secrets do not leak into jobs.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
TAIL_LINES = 40
#: Run before user code when it runs as another user: drop to it (no supplementary
#: groups), then become the program. Not ``subprocess``'s own ``user=``/``group=``: those
#: make it fork() instead of vfork(), and a fork() of a process running gRPC's threads runs
#: gRPC's fork handlers in the child, which sometimes abort it (SIGABRT, "Check failed:
#: next_worker->state == KICKED"; seen in tests/e2e/test_user_code_isolation.py).
_DROP = (
    "import os, sys\n"
    "uid, gid, name, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]\n"
    # found before dropping: the site's Python may live where that user cannot read
    # (lazy imports would fail), and os.execvp imports
    "program = argv[0]\n"
    "if '/' not in program:\n"
    "    for folder in os.environ.get('PATH', os.defpath).split(os.pathsep):\n"
    "        candidate = os.path.join(folder or '.', program)\n"
    "        if os.path.isfile(candidate):\n"
    "            program = candidate\n"
    "            break\n"
    "os.setgroups([]); os.setgid(gid); os.setuid(uid)\n"
    "try:\n"
    "    os.execv(program, argv)\n"
    "except OSError as exc:\n"
    "    print(f'cannot run {argv[0]} as {name} (run_user_code_as): {exc.strerror}; '\n"
    "          f'{name} must be able to read and run it', file=sys.stderr)\n"
    "    sys.exit(126)\n"
)
TAIL_CHARS = 8000


def _drop_to(account: UserAccount) -> list[str]:
    """The argv prefix that runs the rest as ``account`` (see ``_DROP``): the site's own
    Python, isolated (``-I -S``: no site-packages, no ``PYTHON*`` variables)."""
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _DROP,
        str(account.uid),
        str(account.gid),
        account.name,
    ]


def safe_base_env(
    source: Mapping[str, str] | None = None, run_as: UserAccount | None = None
) -> dict[str, str]:
    """The inherited part of user code's environment (``HOME``, ``USER`` and ``LOGNAME``
    are ``run_as``'s when user code runs as another user)."""
    env = os.environ if source is None else source
    base = {key: env[key] for key in _INHERITED if key in env}
    if run_as is not None:
        base.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    return base


class UserProcess:
    """One running user-code process and its process group."""

    def __init__(self, proc: asyncio.subprocess.Process, on_output: OutputSink | None) -> None:
        self._proc = proc
        self._on_output = on_output
        self._stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._readers = [
            asyncio.ensure_future(self._pump(proc.stdout, "stdout")),
            asyncio.ensure_future(self._pump(proc.stderr, "stderr")),
        ]

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        on_output: OutputSink | None = None,
        run_as: UserAccount | None = None,
    ) -> UserProcess:
        """Start ``argv`` in ``cwd`` with exactly ``env``, in a new process group, with no
        descriptor of the site's but its three pipes; as ``run_as`` (its uid, its primary
        group, no supplementary groups) when given, else as the site's user.

        Raises:
            OSError: the program cannot be started (not found, not executable); as
                ``run_as``, that shows as exit code 126 with the reason on stderr.
        """
        if run_as is not None:
            argv = [*_drop_to(run_as), *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        return cls(proc, on_output)

    @property
    def pid(self) -> int:
        """The leader's pid, also the process group id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while running."""
        return self._proc.returncode

    def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr."""
        text = "\n".join(self._stderr_tail)
        return text[-TAIL_CHARS:]

    async def wait(self) -> int:
        """Wait for the leader to exit, then for its output to be read (briefly)."""
        code = await self._proc.wait()
        await self._drain()
        return code

    async def _drain(self) -> None:
        # A grandchild that escaped the group may hold the pipes open: do not wait forever.
        done, pending = await asyncio.wait(self._readers, timeout=1.0)
        for task in pending:
            task.cancel()

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        buffer = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._emit(name, line)
            if len(buffer) > 65536:  # a very long line: emit it in pieces
                self._emit(name, buffer)
                buffer = b""
        if buffer:
            self._emit(name, buffer)

    def _emit(self, name: str, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if name == "stderr":
            self._stderr_tail.append(line)
        if self._on_output is not None:
            with contextlib.suppress(Exception):
                self._on_output(name, line)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def kill_group(self, grace: float = 2.0) -> int:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; return the exit code."""
        if self._proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace)
            except asyncio.TimeoutError:
                pass
        self._signal_group(signal.SIGKILL)
        return await self.wait()

    async def reap_group(self) -> None:
        """After a normal exit: kill whatever the process left behind in its group."""
        self._signal_group(signal.SIGKILL)
        await self._drain()
