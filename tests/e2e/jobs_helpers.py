"""Helpers for the job-runner end-to-end tests: a real server, two real site processes.

A :class:`Cluster` is a :class:`~tests.server_harness.ServerThread` (fast heartbeats and
grace periods) plus ``flare site start`` subprocesses for site-1 and site-2 made from the
session's provisioned kits, and an admin Session. :func:`write_job` writes a job folder
whose script saves exactly what it sends (``<out>/<site>/round_<r>.npz`` + ``.json``), so
tests can aggregate independently.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from flare_admin import Session, new_secure_session
from flare_protocol.models import save_params
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.server_harness import ServerThread, wait_until

ADMIN = "admin@org_a.com"
SITES = ("site-1", "site-2")
FAST_SERVER = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 3.0,
    "reconnect_grace": 3.0,
    "deploy_timeout": 30.0,
    "log_wait": 10.0,
}

#: A Client API script: trains deterministically, saves what it sends, can crash or hang.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time, zlib
    from pathlib import Path
    import numpy as np
    import flare_site.client as flare

    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    out = Path(args["--out"])
    kind = args.get("--type", "FULL")
    flare.init()
    site = flare.get_site_name()
    folder = out / site
    folder.mkdir(parents=True, exist_ok=True)
    n = 30 if site.endswith("1") else 70
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        r = model.current_round
        if flare.is_evaluate():
            loss = float(sum(np.sum(v) for v in model.params.values()))
            flare.send(flare.FLModel(metrics={"sum": loss, "round_seen": float(r)}))
            continue
        if args.get("--crash-round") == str(r) and site == args.get("--crash-site", site):
            print("about to fail on purpose", file=sys.stderr, flush=True)
            raise RuntimeError("deliberate failure in round %d" % r)
        if args.get("--hang-round") == str(r) and site == args.get("--hang-site", site):
            time.sleep(float(args.get("--hang-s", "600")))
        rng = np.random.default_rng(zlib.crc32(f"{site}-{r}".encode()))
        delta = {k: rng.normal(size=np.shape(v)).astype(np.asarray(v).dtype)
                 for k, v in model.params.items()}
        for step in range(3):
            flare.log_metric("loss", 1.0 / (r + step + 1), step=step)
        if kind == "DIFF":
            params = delta
        else:
            params = {k: np.asarray(v) + delta[k] for k, v in model.params.items()}
        np.savez(folder / f"round_{r}.npz", **params)
        (folder / f"round_{r}.json").write_text(json.dumps({"num_examples": n, "type": kind}))
        flare.send(flare.FLModel(params=params, params_type=kind,
                                 metrics={"n": float(n)}, meta={"num_examples": n}))
    """
)

#: A command-executor entry point doing the same as SCRIPT (FULL updates).
ENTRY = textwrap.dedent(
    """
    import json, os, sys, zlib
    from pathlib import Path
    import numpy as np

    def load(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    cmd = sys.argv[1]
    site = os.environ["FLARE_SITE_NAME"]
    out = Path(os.environ["SENDS"])
    if cmd == "startup":
        sys.exit(0)
    if cmd == "train":
        model_in, model_out, meta_out = sys.argv[2:5]
        params = load(model_in)
        n = 30 if site.endswith("1") else 70
        r = len(list((out / site).glob("round_*.npz"))) + 1 if (out / site).exists() else 1
        rng = np.random.default_rng(zlib.crc32(f"{site}-{r}".encode()))
        new = {k: v + rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
        (out / site).mkdir(parents=True, exist_ok=True)
        np.savez(out / site / f"round_{r}.npz", **new)
        (out / site / f"round_{r}.json").write_text(json.dumps({"num_examples": n}))
        with open(model_out, "wb") as fh:
            np.savez(fh, **new)
        Path(meta_out).write_text(json.dumps({"num_examples": n}))
    elif cmd == "validate":
        model_in, metrics_out = sys.argv[2:4]
        params = load(model_in)
        total = float(sum(v.sum() for v in params.values()))
        Path(metrics_out).write_text(json.dumps({"sum": total}))
    """
)


def write_job(
    root: Path,
    out: Path,
    *,
    name: str = "e2e",
    workflow: str = "fedavg",
    rounds: int = 2,
    params_type: str = "FULL",
    min_responses: int | None = 2,
    round_timeout: float = 30,
    validate: bool = False,
    fedopt: dict[str, Any] | None = None,
    executor: str = "script",
    extra_args: tuple[str, ...] = (),
    initial: dict[str, np.ndarray] | None = None,
) -> Path:
    """A job folder ``root/name`` whose sites save what they send under ``out``."""
    job = root / name
    app = job / "app"
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    (job / "meta.json").write_text(
        json.dumps({"name": name, "min_clients": 2, "deploy_map": {"app": ["@ALL"]}})
    )
    server: dict[str, Any] = {
        "workflow": workflow,
        "num_rounds": rounds,
        "round_timeout": round_timeout,
        "validate_every_round": validate,
        "initial_model": "models/initial.npz",
    }
    if min_responses is not None:
        server["min_responses"] = min_responses
    if fedopt is not None:
        server["fedopt"] = fedopt
    (app / "config" / "config_fed_server.json").write_text(json.dumps(server))
    (app / "models").mkdir()
    model = initial or {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3)}
    save_params(model, app / "models" / "initial.npz")
    if executor == "script":
        (app / "custom" / "train.py").write_text(SCRIPT)
        client = {
            "executor": "script",
            "script": "custom/train.py",
            "args": ["--out", str(out), "--type", params_type, *extra_args],
        }
    else:
        (app / "custom" / "entry.py").write_text(ENTRY)
        client = {
            "executor": "command",
            "train": [
                "{python}",
                "custom/entry.py",
                "train",
                "{model_in}",
                "{model_out}",
                "{metadata_out}",
            ],
            "validate": ["{python}", "custom/entry.py", "validate", "{model_in}", "{metrics_out}"],
            "env": {"SENDS": str(out)},
        }
    (app / "config" / "config_fed_client.json").write_text(json.dumps(client))
    return job


def sent(out: Path, site: str, rnd: int) -> tuple[dict[str, np.ndarray], int]:
    """What ``site`` sent in round ``rnd``: (params, num_examples)."""
    with np.load(out / site / f"round_{rnd}.npz", allow_pickle=False) as z:
        params = {k: z[k] for k in z.files}
    meta = json.loads((out / site / f"round_{rnd}.json").read_text())
    return params, int(meta["num_examples"])


class Cluster:
    """A ServerThread, site processes for ``sites`` and an admin Session (context manager).

    ``site_settings``: more keys for every site's ``local/settings.json``.
    """

    def __init__(
        self,
        provisioned: Any,
        tmp: Path,
        sites: tuple[str, ...] = SITES,
        *,
        relay: bool = False,
        site_settings: dict[str, Any] | None = None,
        **server: Any,
    ) -> None:
        self.use_relay = relay
        self.relay: Relay | None = None
        self.provisioned = provisioned
        self.tmp = tmp
        self.site_names = sites
        self.server = ServerThread(
            provisioned.kits["localhost"], tmp / "server-ws", **{**FAST_SERVER, **server}
        )
        self.kits = {
            s: site_kit(provisioned, tmp / "kits", s, **(site_settings or {})) for s in sites
        }
        self.sites: dict[str, SiteProcess] = {}
        self.session: Session

    def __enter__(self) -> Cluster:
        self.server.start()
        try:
            if self.use_relay:
                self.relay = Relay(self.server.server.site_port)
            for site in self.site_names:
                self.start_site(site)
            self.wait_connected(self.site_names)
            self.session = new_secure_session(
                ADMIN, self.provisioned.kits[ADMIN], server_address=self.server.admin_address
            )
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop everything; a site still running that does not stop cleanly (SIGTERM: exit 0
        within 15 s) fails the test once all is cleaned up, unless the test failed already."""
        failures: list[str] = []
        if hasattr(self, "session"):
            self.session.close()
        for site, proc in self.sites.items():
            if proc.proc.poll() is not None:  # the test stopped or killed it on purpose
                proc.close()
                continue
            try:
                code = proc.terminate(15)
                if code != 0:
                    tail = proc.stderr()[-2000:]
                    failures.append(f"{site} exited with {code} on SIGTERM: {tail}")
            except Exception as error:
                failures.append(f"{site} did not stop on SIGTERM: {error!r}")
            finally:
                proc.close()
        for site in self.site_names:
            kill_pids(self.site_job_pids(site))
        if self.relay is not None:
            self.relay.close()
        self.server.stop()
        if failures and not any(exc):
            raise AssertionError("site shutdown failed:\n" + "\n".join(failures))

    def ready(self) -> Cluster:
        """Bring a shared cluster back to its start state, whatever an earlier test did:
        stopped or exited sites running and connected again, no job still running, no
        user process left. Tests sharing a cluster call it first, so that none depends on
        what ran before it."""
        import signal

        for site in self.site_names:
            proc = self.sites[site]
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
            else:
                kill_pids(self.site_job_pids(site))  # a killed site could not clean up
                proc.close()
                self.start_site(site)
        self.wait_connected(self.site_names)
        for meta in self.session.list_jobs():
            if not str(meta["status"]).startswith("FINISHED"):
                self.session.abort_job(meta.job_id)
        wait_until(lambda: not any(self.site_job_pids(s) for s in self.site_names), 20)
        return self

    def start_site(self, site: str) -> SiteProcess:
        address = self.relay.address if self.relay else self.server.site_address
        proc = SiteProcess(self.kits[site], address)
        self.sites[site] = proc
        return proc

    def wait_connected(self, sites: tuple[str, ...], timeout: float = 30) -> None:
        wait_until(
            lambda: set(sites) <= set(self.server.call(self.server.server.registry.names)),
            timeout,
        )

    def submit(self, job: Path, **kw: Any) -> str:
        return self.session.submit_job(str(job), **kw)

    def wait_done(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            meta = dict(self.session.get_job_meta(job_id))
            if str(meta["status"]).startswith("FINISHED"):
                return meta
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {meta['status']} after {timeout} s")
            time.sleep(0.1)

    def result_dir(self, job_id: str) -> Path:
        return Path(self.server.server.store.result_dir(job_id))

    def site_job_pids(self, site: str) -> list[int]:
        """Processes running in one of this site's job folders (user code)."""
        jobs = str((self.kits[site] / "workspace" / "jobs").resolve())
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cwd = os.readlink(f"/proc/{entry}/cwd")
                except OSError:
                    continue
                if cwd.startswith(jobs + "/"):
                    pids.append(int(entry))
        return pids


class Relay:
    """A TCP relay on 127.0.0.1 in front of the server's site port, which a test can cut.

    The bytes pass through untouched (mutual TLS is end to end); ``cut()`` closes every
    relayed connection, as a network failure would; ``target`` may change (a restarted
    server on another port).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
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
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()


def kill_pids(pids: list[int]) -> None:
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
