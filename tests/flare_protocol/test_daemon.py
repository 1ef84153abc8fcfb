"""What the server and site daemons set up for their whole process (each check runs in
a fresh interpreter: the settings hold for a whole process)."""

from __future__ import annotations

import subprocess
import sys


def test_a_native_crash_of_a_daemon_leaves_a_python_traceback_on_stderr() -> None:
    code = (
        "from flare_protocol._daemon import prepare_daemon_process\n"
        "prepare_daemon_process()\n"
        "import os, signal\n"
        "def crashing_function():\n"
        "    os.kill(os.getpid(), signal.SIGABRT)\n"
        "crashing_function()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == -6
    assert "Fatal Python error: Aborted" in done.stderr
    assert "crashing_function" in done.stderr


def test_it_is_harmless_where_stderr_is_not_a_file() -> None:
    code = (
        "import io, sys\n"
        "sys.stderr = io.StringIO()  # as under a test runner's capture\n"
        "from flare_protocol._daemon import prepare_daemon_process\n"
        "prepare_daemon_process()\n"
        "print('started')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "started\n")
