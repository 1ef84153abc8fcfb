"""Helpers for site-runtime tests: a site kit copy with fast settings, and a site process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from tests.kit_factory import copy_kit
from tests.server_harness import REPO

FAST_SETTINGS = {
    "log_level": "INFO",
    "heartbeat_interval_s": 0.2,
    "connect_timeout_s": 2.0,
    "reconnect_initial_s": 0.1,
    "reconnect_max_s": 0.5,
    "stop_grace_s": 2.0,
}


def site_kit(provisioned: Any, dest: Path, name: str = "site-1", **settings: Any) -> Path:
    """A copy of ``name``'s kit whose (unsigned) ``local/settings.json`` reconnects fast."""
    kit = copy_kit(provisioned, name, dest)
    (kit / "local" / "settings.json").write_text(json.dumps({**FAST_SETTINGS, **settings}))
    return kit


class SiteProcess:
    """``flare site start`` as a child process (stderr kept in a file)."""

    def __init__(self, kit: Path, server: str, *extra: str) -> None:
        self.kit = kit
        self.err_path = kit.parent / f"{kit.name}.stderr"
        self._err = open(self.err_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flare_cli.main",
                "site",
                "start",
                str(kit),
                "--server",
                server,
                *extra,
            ],
            stdout=self._err,
            stderr=self._err,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._err.close()

    def __enter__(self) -> SiteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def app_zip(files: dict[str, str | bytes]) -> bytes:
    """A zip of an app folder's content (relative path -> text or bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()
