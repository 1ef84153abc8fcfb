"""The server package's public API is what ``flare_server.__all__`` lists."""

from __future__ import annotations

import subprocess
import sys

import flare_server


def test_public_api_is_pinned():
    assert sorted(flare_server.__all__) == [
        "DEFAULT_POLICY",
        "JobLauncher",
        "JobRunner",
        "Policy",
        "Right",
        "Scope",
        "Server",
        "ServerSettings",
        "ServerState",
        "check_server_kit",
        "load_server_kit",
    ]
    for name in flare_server.__all__:
        assert getattr(flare_server, name) is not None


def test_importing_the_job_store_does_not_load_the_server():
    code = "import sys, flare_server.jobs; print('flare_server.app' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
