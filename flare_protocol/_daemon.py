"""Process-wide settings only the ``flare server`` and ``flare site`` daemons make."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import io
import os
import signal
import sys

from flare_protocol import _malloc

#: Set by a parent that starts a daemon as its child (``flare poc``, ``flare simulate``) to
#: its own pid: the daemon then gets SIGTERM when that parent dies, even by SIGKILL.
DIE_WITH_PARENT_ENV = "FLARE_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def prepare_daemon_process() -> None:
    """Tune malloc for transfer buffers (:mod:`flare_protocol._malloc`), make a native
    crash (SIGSEGV, SIGABRT) print a Python traceback to stderr, i.e. into the daemon's
    log, instead of ending it without a word, and end with a parent that asked for it
    (:data:`DIE_WITH_PARENT_ENV`). Not for processes we do not own."""
    _malloc.tune()
    # stderr may be no file (captured by a test runner, embedded): then no traceback.
    with contextlib.suppress(io.UnsupportedOperation, ValueError, AttributeError):
        faulthandler.enable()
    _die_with_parent()


def _die_with_parent() -> None:
    # Done here, after exec, and not in a preexec_fn: Python code between fork and exec
    # in a parent running threads (grpc's) can crash the child (seen: SIGABRT, SIGSEGV).
    wanted = os.environ.pop(DIE_WITH_PARENT_ENV, "")
    if not wanted.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(wanted):  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
