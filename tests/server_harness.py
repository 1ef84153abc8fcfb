"""Running the real server in tests: in a background thread, or as a subprocess.

``ServerThread`` runs :class:`flare_server.app.Server` on its own event loop in a daemon
thread (fast; the test can reach ``.server.store`` and ``.server.registry`` through
``.call``). ``ServerProcess`` runs ``flare server start`` as a child process with
``--ready-file`` so that tests can ``kill -9`` it. Both bind 127.0.0.1 on port 0.

Client helpers open raw generated stubs over real mutual TLS with a kit's credentials.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from flare_protocol._generated import admin_pb2_grpc, site_pb2_grpc
from flare_protocol.credentials import channel_credentials, channel_options
from flare_protocol.kit import load_kit
from flare_server.app import Server, check_server_kit, load_server_kit
from flare_server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[1]


class ServerThread:
    """The real server in a background thread's event loop (a context manager)."""

    def __init__(
        self, kit_dir: Path, workspace: Path, *, launcher: Any = None, **settings: Any
    ) -> None:
        self.kit = load_server_kit(kit_dir)
        check_server_kit(self.kit)
        base = ServerSettings.from_kit(
            self.kit, host="127.0.0.1", admin_port=0, fed_learn_port=0, workspace=workspace
        )
        self.settings = base.replace(**{"grace_period": 0.5, **settings})
        self.launcher = launcher
        self.server: Server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        self.server = self.call(lambda: Server(self.kit, self.settings, launcher=self.launcher))
        self.call(self.server.start())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.server.stop(grace=0.2), timeout=15)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            # Its worker threads and descriptors (epoll, self-pipe) go with it: a suite that
            # starts hundreds of servers must not run out of them.
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.server.admin_port}"

    @property
    def site_address(self) -> str:
        return f"127.0.0.1:{self.server.site_port}"

    def call(self, what: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine, or a function, on the server's loop and return its result."""
        if inspect.iscoroutine(what):
            return asyncio.run_coroutine_threadsafe(what, self._loop).result(timeout)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(what())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout)


class ServerProcess:
    """``flare server start`` in a child process; ports come from its ready file."""

    def __init__(
        self, kit_dir: Path, workspace: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.kit_dir = Path(kit_dir)
        self.workspace = Path(workspace)
        self.ready_file = self.workspace.parent / f"{self.workspace.name}.ready.json"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.ready_file.unlink(missing_ok=True)
        self.log = open(self.workspace.parent / f"{self.workspace.name}.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flare_cli.main",
                "server",
                "start",
                str(self.kit_dir),
                "--workspace",
                str(self.workspace),
                "--host",
                "127.0.0.1",
                "--admin-port",
                "0",
                "--fed-learn-port",
                "0",
                "--ready-file",
                str(self.ready_file),
            ],
            stdout=self.log,
            stderr=self.log,
            cwd=REPO,
            env={**os.environ, **(self.env or {})},
        )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"server not ready in {timeout} s: {self.stderr()}")
            time.sleep(0.02)
        self.ready = json.loads(self.ready_file.read_text())
        return self

    def stderr(self) -> str:
        path = self.workspace.parent / f"{self.workspace.name}.stderr"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.ready['admin_port']}"

    @property
    def site_address(self) -> str:
        return f"127.0.0.1:{self.ready['fed_learn_port']}"

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if hasattr(self, "log"):
            self.log.close()


# -- clients -------------------------------------------------------------------------------


def open_channel(
    kit_dir: Path, address: str, extra_options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """A sync mutual-TLS channel with a kit's credentials."""
    kit = load_kit(kit_dir)
    return grpc.secure_channel(
        address,
        channel_credentials(kit),
        options=channel_options(kit, address) + (extra_options or []),
    )


def admin_stub(kit_dir: Path, address: str) -> tuple[admin_pb2_grpc.AdminStub, grpc.Channel]:
    channel = open_channel(kit_dir, address)
    return admin_pb2_grpc.AdminStub(channel), channel


def site_stub(kit_dir: Path, address: str) -> tuple[site_pb2_grpc.SiteStub, grpc.Channel]:
    channel = open_channel(kit_dir, address)
    return site_pb2_grpc.SiteStub(channel), channel


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until truthy; its value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
