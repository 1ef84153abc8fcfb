"""Process-wide settings only the ``flare server`` and ``flare site`` daemons make."""

from __future__ import annotations

import contextlib
import faulthandler
import io

from flare_protocol import _malloc


def prepare_daemon_process() -> None:
    """Tune malloc for transfer buffers (:mod:`flare_protocol._malloc`) and make a native
    crash (SIGSEGV, SIGABRT) print a Python traceback to stderr, i.e. into the daemon's
    log, instead of ending it without a word. Not for processes we do not own."""
    _malloc.tune()
    # stderr may be no file (captured by a test runner, embedded): then no traceback.
    with contextlib.suppress(io.UnsupportedOperation, ValueError, AttributeError):
        faulthandler.enable()
