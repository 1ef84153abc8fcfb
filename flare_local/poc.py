"""``flare poc``: a whole project on this machine, a server and N sites on 127.0.0.1.

Theory of operation. :func:`provision_local` writes a small ``project.yml`` (server
``localhost`` with host name 127.0.0.1, N sites, one ``project_admin``) into the
workspace and provisions it with our own provisioning, reusing the newest ``prod_NN``
when it already holds exactly these kits. :class:`LocalProject` then starts
``flare server start`` with both ports 0 and waits for its ready file, which names the
ports it bound; it writes that address into the admin kit's and every site kit's
``local/settings.json`` (unsigned, meant for such overrides), so ``new_secure_session``,
``flare admin`` and a site's own ``start.sh`` find the server. Then it starts one
``flare site start --server 127.0.0.1:<port>`` per site and waits until the server
lists them all as connected. Every child runs in its own session (a Ctrl-C at the
terminal reaches only us, so we choose the order) and, on Linux, is told to get SIGTERM
should we die without stopping it. :meth:`LocalProject.stop` sends SIGTERM to the sites
first (they abort their jobs and kill their job process groups), waits, then stops the
server, and SIGKILLs whatever outlives its grace.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_protocol._daemon import DIE_WITH_PARENT_ENV
from flare_protocol._direct_io import replace_file
from flare_protocol.errors import FlareError

if TYPE_CHECKING:
    from flare_admin import Session

__all__ = [
    "ADMIN_NAME",
    "LocalProject",
    "PocKits",
    "main",
    "provision_local",
]

PROJECT_NAME = "poc"
SERVER_NAME = "localhost"
ADMIN_NAME = "admin@poc.local"
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class PocKits:
    """The kits of a local project (what :func:`provision_local` made or found)."""

    workspace: Path
    prod_dir: Path
    server_kit: Path
    site_kits: dict[str, Path]
    admin_kit: Path
    admin_name: str = ADMIN_NAME


def site_names(count: int = 2, names: Sequence[str] | None = None) -> list[str]:
    """``site-1 .. site-N``, or the given names (checked).

    Raises:
        FlareError: a bad count or name, or a name given twice.
    """
    if names:
        out = [n.strip() for n in names if n.strip()]
        for name in out:
            if not _SITE_NAME.match(name) or name in (SERVER_NAME, "server"):
                raise FlareError(
                    f"site name {name!r} is not usable: letters, digits, '-' and '_', "
                    f"starting with a letter or digit, and not {SERVER_NAME!r}"
                )
        if len(set(out)) != len(out):
            raise FlareError(f"site names must differ, got {', '.join(out)}")
        if not out:
            raise FlareError("--sites needs at least one name")
        return out
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
        raise FlareError(f"the number of sites must be between 1 and 64, got {count!r}")
    return [f"site-{i}" for i in range(1, count + 1)]


def project_yaml(sites: Sequence[str]) -> str:
    """The ``project.yml`` of a local project with these sites."""
    lines = [
        "api_version: 3",
        f"name: {PROJECT_NAME}",
        "description: local proof-of-concept project made by flare poc / flare simulate",
        "participants:",
        f"  - name: {SERVER_NAME}",
        "    type: server",
        "    org: poc",
        "    fed_learn_port: 8002",
        "    admin_port: 8003",
        "    host_names: [127.0.0.1]",
    ]
    for name in sites:
        lines += [f"  - name: {name}", "    type: client", "    org: poc"]
    lines += [f"  - name: {ADMIN_NAME}", "    type: admin", "    org: poc"]
    lines += ["    role: project_admin"]
    return "\n".join(lines) + "\n"


def _latest_prod(project_dir: Path) -> Path | None:
    prods = sorted(p for p in project_dir.glob("prod_*") if re.fullmatch(r"prod_\d+", p.name))
    return prods[-1] if prods else None


def provision_local(workspace: str | os.PathLike[str], sites: Sequence[str]) -> PocKits:
    """Provision (or reuse) the local project in ``workspace``; return its kits.

    Raises:
        ProjectFileError, ProvisionError: provisioning failed (named in the message).
    """
    from provisioning import provision

    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    project_file = workspace / "project.yml"
    wanted = project_yaml(sites)
    prod = _latest_prod(workspace / PROJECT_NAME)
    same = project_file.is_file() and project_file.read_text(encoding="utf-8") == wanted
    names = [SERVER_NAME, *sites, ADMIN_NAME]
    if not (same and prod is not None and all((prod / n / "startup").is_dir() for n in names)):
        project_file.write_text(wanted, encoding="utf-8")
        prod = provision(project_file, workspace).prod_dir.resolve()
    return PocKits(
        workspace=workspace,
        prod_dir=prod,
        server_kit=prod / SERVER_NAME,
        site_kits={name: prod / name for name in sites},
        admin_kit=prod / ADMIN_NAME,
    )


def set_server_address(kit_dir: Path, address: str, **more: Any) -> None:
    """Put ``server_address`` (and ``more`` settings) into a kit's ``local/settings.json``
    (other keys kept)."""
    path = kit_dir / "local" / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    data["server_address"] = address
    data.update(more)
    replace_file(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)


class LocalProject:
    """A server and its sites as child processes of this one (a context manager).

    ``start()`` returns once every site is connected; ``stop()`` ends sites, then the
    server. Console output of each child goes to ``<workspace>/logs/<name>.console.log``.
    """

    def __init__(self, kits: PocKits, *, python: str | None = None) -> None:
        self.kits = kits
        self.python = python or sys.executable
        self.log_dir = kits.workspace / "logs"
        self.ready_file = self.log_dir / "server.ready.json"
        self.server: subprocess.Popen[bytes] | None = None
        self.sites: dict[str, subprocess.Popen[bytes]] = {}
        self.ready: dict[str, Any] = {}
        self._logs: list[Any] = []
        self._lock = threading.Lock()
        self._lock_fd: int | None = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.ready['admin_port']}"

    @property
    def site_address(self) -> str:
        return f"127.0.0.1:{self.ready['fed_learn_port']}"

    def pids(self) -> list[int]:
        """Process ids of every child started (running or not)."""
        procs = [self.server, *self.sites.values()]
        return [p.pid for p in procs if p is not None]

    # -- start ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.console.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(
            [self.python, "-m", "flare_cli.main", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.kits.workspace,
            # the child ends with us, even if we are killed (see flare_protocol._daemon)
            env={**os.environ, "PYTHONUNBUFFERED": "1", DIE_WITH_PARENT_ENV: str(os.getpid())},
            start_new_session=True,
        )

    def console_tail(self, name: str, lines: int = 15) -> str:
        """The last lines a child printed (for error messages)."""
        path = self.log_dir / f"{name}.console.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def start_server(self, timeout: float = 30.0) -> None:
        """Start the server on 127.0.0.1, ports 0; wait for its ready file.

        Raises:
            FlareError: it exited or was not ready in time (its last output quoted).
        """
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self.server = self._spawn(
            "server",
            [
                "server",
                "start",
                str(self.kits.server_kit),
                "--new-workspace",  # a throw-away project: its prod_NN starts afresh
                "--host",
                "127.0.0.1",
                "--admin-port",
                "0",
                "--fed-learn-port",
                "0",
                "--ready-file",
                str(self.ready_file),
            ],
        )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            code = self.server.poll()
            if code is not None:
                raise FlareError(
                    f"the server exited with status {code} while starting; its output "
                    f"({self.log_dir / 'server.console.log'}):\n{self.console_tail('server')}"
                )
            if time.monotonic() > deadline:
                raise FlareError(
                    f"the server was not ready within {timeout:.0f} s; its output:\n"
                    f"{self.console_tail('server')}"
                )
            time.sleep(0.02)
        self.ready = json.loads(self.ready_file.read_text(encoding="utf-8"))
        set_server_address(self.kits.admin_kit, self.admin_address)
        # Run as root, a site must say as whom user code runs: here it is the user's own code
        # on the user's own machine, so as root, knowingly (docs/security.md).
        as_root = {"run_user_code_as": "root"} if os.geteuid() == 0 else {}
        for kit in self.kits.site_kits.values():
            set_server_address(kit, self.site_address, **as_root)

    def start_sites(self) -> None:
        """Start one ``flare site start`` per site, dialling the server's site port."""
        for name, kit in self.kits.site_kits.items():
            self.sites[name] = self._spawn(
                name,
                ["site", "start", str(kit), "--new-workspace", "--server", self.site_address],
            )

    def session(self, timeout: float = 10.0) -> Session:
        """A new admin :class:`~flare_admin.Session` (the caller closes it)."""
        from flare_admin import new_secure_session

        return new_secure_session(
            self.kits.admin_name,
            self.kits.admin_kit,
            timeout=timeout,
            server_address=self.admin_address,
        )

    def wait_sites_connected(self, timeout: float = 30.0) -> None:
        """Wait until the server lists every site as connected.

        Raises:
            FlareError: a site exited, or not all connected in time (naming them).
        """
        wanted = set(self.kits.site_kits)
        deadline = time.monotonic() + timeout
        with self.session() as session:
            while True:
                connected = {s.name for s in session.get_connected_client_list()}
                if wanted <= connected:
                    return
                for name, proc in self.sites.items():
                    if proc.poll() is not None:
                        raise FlareError(
                            f"site {name} exited with status {proc.returncode} while "
                            f"connecting; its output:\n{self.console_tail(name)}"
                        )
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(wanted - connected))
                    raise FlareError(
                        f"sites not connected within {timeout:.0f} s: {missing}; see {self.log_dir}"
                    )
                time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> LocalProject:
        """Start the server and every site; return once all sites are connected.

        On failure everything started is stopped again before the error is raised.
        """
        self._take_workspace()
        try:
            self.start_server(timeout)
            self.start_sites()
            self.wait_sites_connected(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _take_workspace(self) -> None:
        """Hold ``<workspace>/poc.lock``: a second run would rewrite the kits' addresses."""
        path = self.kits.workspace / "poc.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FlareError(
                f"another flare poc or simulate (pid {holder}) runs in workspace "
                f"{self.kits.workspace}; stop it first or use another -w"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    # -- stop -----------------------------------------------------------------------------

    def dead_children(self) -> dict[str, int]:
        """Children that exited: name -> exit status."""
        out = {n: p.returncode for n, p in self.sites.items() if p.poll() is not None}
        if self.server is not None and self.server.poll() is not None:
            out["server"] = self.server.returncode
        return out

    @staticmethod
    def _terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: no child survives
                proc.wait(5)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the sites and wait, then the server; SIGKILL any that outlive ``grace``."""
        with self._lock:
            self._terminate(list(self.sites.values()), grace)
            if self.server is not None:
                self._terminate([self.server], grace)
            for log in self._logs:
                log.close()
            self._logs.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the workspace lock
                self._lock_fd = None

    def __enter__(self) -> LocalProject:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while inside (the previous handlers restored after)."""
    event = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside, as Ctrl-C does, so cleanup code runs."""

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _example_job() -> str:
    example = Path(__file__).resolve().parents[1] / "examples" / "hello-numpy"
    return str(example) if (example / "meta.json").is_file() else "path/to/job"


def snippet(kits: PocKits) -> str:
    """Python an admin can paste to use the running project."""
    return (
        "from flare_admin import new_secure_session\n"
        f"s = new_secure_session({kits.admin_name!r}, {str(kits.admin_kit)!r})\n"
        "print(s.get_connected_client_list())\n"
        f"job_id = s.submit_job({_example_job()!r})\n"
        "s.wait_for_job(job_id)\n"
        "print(s.get_job_metrics(job_id))\n"
        "print(s.download_model(job_id))"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flare poc",
        description="Provision a local project and run its server and sites on 127.0.0.1 "
        "until Ctrl-C.",
    )
    parser.add_argument(
        "-w",
        "--workspace",
        type=Path,
        help="where the project lives (default: a new temporary folder, removed at the end)",
    )
    parser.add_argument("-n", "--sites-count", type=int, default=2, help="number of sites (2)")
    parser.add_argument("--sites", help="comma-separated site names instead of site-1..site-N")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    temporary = args.workspace is None
    workspace = Path(tempfile.mkdtemp(prefix="flare-poc-")) if temporary else args.workspace
    project: LocalProject | None = None
    try:
        with sigterm_interrupts():
            names = site_names(args.sites_count, args.sites.split(",") if args.sites else None)
            print(f"provisioning project '{PROJECT_NAME}' in {workspace} ...", flush=True)
            kits = provision_local(workspace, names)
            project = LocalProject(kits).start()
        with stop_signals() as stop:
            _announce(project)
            return _wait(project, stop)
    except FlareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if project is not None:
            with stop_signals():  # a second Ctrl-C must not cut the clean stop short
                print("stopping sites, then the server ...", flush=True)
                project.stop()
                print("stopped.", flush=True)
        if temporary:
            shutil.rmtree(workspace, ignore_errors=True)


def _announce(project: LocalProject) -> None:
    kits = project.kits
    sites = ", ".join(f"{n} (pid {p.pid})" for n, p in project.sites.items())
    assert project.server is not None
    print(
        f"\nserver   localhost, admin {project.admin_address}, sites {project.site_address} "
        f"(pid {project.server.pid})\n"
        f"sites    {sites}\n"
        f"admin    {kits.admin_name}\n"
        f"kit      {kits.admin_kit}\n"
        f"logs     {project.log_dir}\n\n"
        f"The admin shell:\n\n    flare admin {kits.admin_kit}\n\n"
        f"Or in Python:\n\n{snippet(kits)}\n\n"
        "Ctrl-C stops everything.",
        flush=True,
    )


def _wait(project: LocalProject, stop: threading.Event) -> int:
    reported: set[str] = set()
    while not stop.wait(0.25):
        for name, code in project.dead_children().items():
            if name == "server":
                print(f"the server exited (status {code}); stopping the sites", flush=True)
                return 0 if code == 0 else 1
            if name not in reported:
                reported.add(name)
                print(f"site {name} exited (status {code})", flush=True)
    return 0
