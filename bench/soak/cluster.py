"""The soak's cluster: a server, sites behind a cuttable relay, all real processes.

Theory of operation. :func:`provision_cluster` provisions a local project with our own
provisioning (``flare_local.poc.provision_local``: a CA, signed kits, one project_admin)
and writes fast heartbeat and reconnect settings into the server's and every site's
unsigned ``local/settings.json``. :class:`ServerProc` runs ``flare server start`` with an
explicit workspace; its first start binds ports 0 and every restart binds the ports the
first one reported, so admin channels and the relay dial the same addresses across a
``kill -9``. Sites dial a :class:`Relay` on 127.0.0.1 that forwards bytes untouched to the
server's site port (mutual TLS stays end to end); ``Relay.down()`` closes every relayed
connection and refuses new ones until ``Relay.up()``: a network cut that lasts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flare_local.poc import PocKits, provision_local
from flare_site.executors.base import remove_stale_ipc_folders

REPO = Path(__file__).resolve().parents[2]

#: Server settings (server kit's local/settings.json): failures are seen within seconds.
SERVER_SETTINGS = {
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 5.0,
    "reconnect_grace": 5.0,
    "deploy_timeout": 30.0,
    "log_wait": 5.0,
    "grace_period": 2.0,
}
#: Site settings: reconnect fast after a cut or a server restart.
SITE_SETTINGS = {
    "log_level": "INFO",
    "heartbeat_interval_s": 0.5,
    "connect_timeout_s": 2.0,
    "reconnect_initial_s": 0.1,
    "reconnect_max_s": 1.0,
    "stop_grace_s": 2.0,
}


def _merge_settings(kit: Path, values: dict[str, Any]) -> None:
    path = kit / "local" / "settings.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**current, **values}, indent=2))


def provision_cluster(root: Path, sites: list[str]) -> PocKits:
    """Provision a project with ``sites`` under ``root``; fast settings in every kit."""
    kits = provision_local(root / "project", sites)
    _merge_settings(kits.server_kit, SERVER_SETTINGS)
    # A root site must say as whom user code runs; the soak's jobs are ours (and this
    # venv's interpreter is usually unreadable for an unprivileged user): root, knowingly.
    as_root = {"run_user_code_as": "root"} if os.geteuid() == 0 else {}
    for kit in kits.site_kits.values():
        _merge_settings(kit, {**SITE_SETTINGS, **as_root})
    return kits


def _spawn(args: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flare_cli.main", *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # a Ctrl-C at the terminal reaches the soak only
    )


class _Child:
    """A ``flare`` child process with its console log (reopened on every start)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed on the next start/stop
        self.proc = _spawn(args, self._log)
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process alone: no cleanup of any kind (as in a crash)."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ServerProc(_Child):
    """``flare server start`` on a fixed workspace; restarts bind the first start's ports."""

    def __init__(self, kit: Path, workspace: Path, log_dir: Path) -> None:
        super().__init__(log_dir / "server.console.log")
        self.kit = kit
        self.workspace = workspace
        self.ready_file = log_dir / "server.ready.json"
        self.admin_port = 0
        self.site_port = 0
        self.starts = 0

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.alive() else None

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait for the ready file (RuntimeError naming the log otherwise)."""
        self.ready_file.unlink(missing_ok=True)
        args = ["server", "start", str(self.kit), "--workspace", str(self.workspace)]
        args += ["--host", "127.0.0.1", "--admin-port", str(self.admin_port)]
        args += ["--fed-learn-port", str(self.site_port), "--ready-file", str(self.ready_file)]
        proc = self._spawn(args)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"the server did not start (exit {proc.returncode}); see {self.log_path}"
                )
            time.sleep(0.02)
        ready = json.loads(self.ready_file.read_text())
        self.admin_port, self.site_port = int(ready["admin_port"]), int(ready["fed_learn_port"])


class SiteProc(_Child):
    """``flare site start`` dialling ``server`` (the relay)."""

    def __init__(self, name: str, kit: Path, server: str, log_dir: Path, max_jobs: int) -> None:
        super().__init__(log_dir / f"{name}.console.log")
        self.name = name
        self.kit = kit
        self.server = server
        self.max_jobs = max_jobs

    @property
    def jobs_dir(self) -> Path:
        return self.kit / "workspace" / "jobs"

    def start(self) -> None:
        args = ["site", "start", str(self.kit), "--new-workspace", "--server", self.server]
        self._spawn([*args, "--max-jobs", str(self.max_jobs)])

    def stop(self, timeout: float = 20.0) -> int | None:
        code = super().stop(timeout)
        remove_stale_ipc_folders(self.jobs_dir)  # what its next start would do
        return code


def job_process_pids(jobs_dir: Path) -> list[int]:
    """Processes whose working folder is inside ``jobs_dir`` (a site's user code)."""
    root = str(jobs_dir.resolve()) + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(root):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class Relay:
    """A TCP relay on 127.0.0.1 in front of a port, which can be cut for a while.

    While ``down()``, every relayed connection is closed and new ones are accepted and
    closed at once (a peer sees a reset, as behind a broken link); ``up()`` restores it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._down = False
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def down(self) -> None:
        self._down = True
        self._cut()

    def up(self) -> None:
        self._down = False

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down:
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _hard_close(client)
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _hard_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@dataclass
class Cluster:
    """The server, its relay and its sites."""

    kits: PocKits
    server: ServerProc
    relay: Relay
    sites: dict[str, SiteProc]

    @classmethod
    def start(cls, root: Path, sites: list[str], max_jobs: int) -> Cluster:
        kits = provision_cluster(root, sites)
        log_dir = root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        server = ServerProc(kits.server_kit, root / "server-workspace", log_dir)
        server.start()
        relay = Relay(server.site_port)
        procs = {
            name: SiteProc(name, kit, relay.address, log_dir, max_jobs)
            for name, kit in kits.site_kits.items()
        }
        for proc in procs.values():
            proc.start()
        return cls(kits, server, relay, procs)

    def stop(self) -> list[str]:
        """Stop the sites (SIGTERM), the relay and the server; what did not stop cleanly."""
        problems = []
        for site in self.sites.values():
            code = site.stop()
            if code not in (0, None):
                problems.append(f"{site.name} exited with {code} on SIGTERM")
        self.relay.close()
        code = self.server.stop()
        if code not in (0, None):
            problems.append(f"the server exited with {code} on SIGTERM")
        return problems
