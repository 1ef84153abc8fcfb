"""User code cannot read the site's secrets.

A real server and a real ``flare site start`` run a job whose user code is a probe: it
looks for the site's private key everywhere a job could (by its path in the kit, which
it learns from the site's command line; in its environment and argv; in
``/proc/<site>/environ``, ``/proc/<site>/fd/*`` and ``/proc/<site>/root``; in the
descriptors it inherited; under its own workspace and the site's) and writes what it
could read to ``report.json`` and as metrics. The site runs as root here:

* with ``run_user_code_as: "nobody"`` the probe runs as nobody and reads nothing;
* with ``run_user_code_as: "root"`` (allowed knowingly) it runs as the site's user: the
  key is still in none of the channels the site hands user code (environment, argv,
  inherited descriptors, the job's workspace), though the probe can open it by its path,
  as any program of the site's user could: what docs/security.md says, and why it
  recommends a dedicated user for user code.

A site running as root without the setting refuses to start, naming it. The probe runs
with the system's ``/usr/bin/python3`` (the suite's interpreter may live where nobody
cannot reach it, such as ``/root``): the site runs under ``/usr/bin/python3 -S`` with
the suite's site-packages, so that ``{python}`` in the probe's command is one nobody may
run, as a deployment would install the site (docs/security.md).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flare_admin import new_secure_session
from flare_protocol.kit import load_kit
from flare_protocol.models import save_params
from tests.e2e.jobs_helpers import ADMIN, FAST_SERVER
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.server_harness import ServerThread, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python_version() -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-S", "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="runs the site as root to drop user code to 'nobody'; run the suite as root",
    ),
    pytest.mark.skipif(
        sys.version_info[:2] != _system_python_version(),
        reason="needs a /usr/bin/python3 of the suite's Python version, to run the site with",
    ),
]

PURELIB = sysconfig.get_paths()["purelib"]
#: ``flare`` on the system's Python, with the suite's site-packages (and nothing else).
BOOT = (
    "import site, sys; site.addsitedir(sys.argv.pop(1)); "
    "from flare_cli.main import main; sys.exit(main())"
)

PROBE = textwrap.dedent(
    """
    import json, os, stat, sys
    FDS = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))  # before anything opens one
    sys.path.insert(0, sys.argv[1])  # the suite's site-packages: numpy
    import numpy as np

    entry, key_path = sys.argv[2], sys.argv[3]
    MARK = "PRIVATE" + " KEY"  # not literally in this file, which is in the workspace
    tried, read = [], []

    def attempt(what, path):
        tried.append(what)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return  # a pipe or a socket of the site's: reading it would block
            with open(path, "rb") as fh:
                data = fh.read(1 << 20)
        except OSError:
            return
        if MARK.encode() in data:
            read.append(what)

    ppid = os.getppid()
    try:  # what an attacker learns of the kit: the site's command line
        site_argv = open(f"/proc/{ppid}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        site_argv = []
    kits = [a.decode() for a in site_argv if a.startswith(b"/") and os.sep in a.decode()]
    for kit in kits:
        attempt(f"key under the kit on the site's command line {kit}",
                os.path.join(kit, "startup", "client.key"))
    attempt("key by its path", key_path)
    attempt("/proc/<site>/environ", f"/proc/{ppid}/environ")
    attempt("key through /proc/<site>/root", f"/proc/{ppid}/root{key_path}")
    try:
        site_fds = os.listdir(f"/proc/{ppid}/fd")
    except OSError:
        site_fds = []
    tried.append("/proc/<site>/fd")
    for fd in site_fds:
        attempt(f"/proc/<site>/fd/{fd}", f"/proc/{ppid}/fd/{fd}")
    inherited = []
    for fd in FDS:
        if fd > 2:
            try:
                inherited.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass  # the folder listdir itself had open
    env_hits = [k for k, v in os.environ.items()
                if MARK in v or key_path in v or "client.key" in v or "startup" in v]
    argv_hits = [a for a in sys.argv if "client.key" in a or "startup" in a]
    argv_hits = [a for a in argv_hits if a != key_path]  # the test hands it to the probe
    workspace_hits = []
    for top in (os.getcwd(), os.environ["FLARE_JOB_WORKSPACE"],
                os.path.dirname(os.path.dirname(os.environ["FLARE_JOB_WORKSPACE"]))):
        for folder, dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as fh:
                        if MARK.encode() in fh.read(1 << 20):
                            workspace_hits.append(path)
                except OSError:
                    pass
    report = {"uid": os.getuid(), "tried": tried, "read": read, "inherited_fds": inherited,
              "env_hits": env_hits, "argv_hits": argv_hits, "workspace_hits": workspace_hits}
    with open("report.json", "w") as fh:
        json.dump(report, fh)
    print(json.dumps(report), flush=True)

    if entry == "train":
        model_in, model_out, metadata_out = sys.argv[4:7]
        with np.load(model_in, allow_pickle=False) as z:
            params = {k: z[k] for k in z.files}
        with open(model_out, "wb") as fh:
            np.savez(fh, **params)
        secrets_read = len(read) + len(env_hits) + len(argv_hits) + len(workspace_hits)
        with open(metadata_out, "w") as fh:
            json.dump({"num_examples": 1, "metrics": {"secrets_read": secrets_read,
                                                      "inherited_fds": len(inherited)}}, fh)
    """
)


@pytest.fixture
def open_workspace() -> Iterator[Path]:
    """A site workspace that another user can reach (pytest's own folders are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="flare-isolation-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)
        yield base / "site-1"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _job(root: Path, key_path: Path) -> Path:
    job = root / "probe-job"
    app = job / "app"
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    (app / "models").mkdir()
    (job / "meta.json").write_text(
        json.dumps({"name": "probe", "min_clients": 1, "deploy_map": {"app": ["server", "site-1"]}})
    )
    server = {
        "workflow": "fedavg",
        "num_rounds": 1,
        "min_responses": 1,
        "round_timeout": 30,
        "initial_model": "models/initial.npz",
    }
    (app / "config" / "config_fed_server.json").write_text(json.dumps(server))
    save_params({"w": np.arange(3, dtype=np.float32)}, app / "models" / "initial.npz")
    (app / "custom" / "probe.py").write_text(PROBE)
    purelib = PURELIB
    probe = ["{python}", "custom/probe.py", purelib]
    client = {
        "executor": "command",
        "train": [*probe, "train", str(key_path), "{model_in}", "{model_out}", "{metadata_out}"],
    }
    (app / "config" / "config_fed_client.json").write_text(json.dumps(client))
    return job


def _run_probe(provisioned: Any, tmp_path: Path, workspace: Path, run_as: str) -> dict[str, Any]:
    """Run the probe job on site-1 with ``run_user_code_as``; the probe's report."""
    kit = site_kit(provisioned, tmp_path / "kits", "site-1", run_user_code_as=run_as)
    key_path = load_kit(kit).key_path
    with ServerThread(
        provisioned.kits["localhost"], tmp_path / "server-ws", **FAST_SERVER
    ) as server:
        err = tmp_path / "site.stderr"
        with open(err, "wb") as log:
            site = subprocess.Popen(
                [SYSTEM_PYTHON, "-S", "-c", BOOT, PURELIB, "site", "start", str(kit),
                 "--server", server.site_address, "--workspace", str(workspace)],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        try:
            wait_until(lambda: "site-1" in server.call(server.server.registry.names), 30)
            with new_secure_session(
                ADMIN, provisioned.kits[ADMIN], server_address=server.admin_address
            ) as session:
                job_id = session.submit_job(str(_job(tmp_path / "jobs", key_path)))
                meta = wait_until(
                    lambda: (
                        (m := session.get_job_meta(job_id))["status"].startswith("FINISHED") and m
                    ),
                    60,
                    0.1,
                )
                assert meta["status"] == "FINISHED:COMPLETED", session.get_job_summary(
                    job_id
                ).reason
        finally:
            site.terminate()
            code = site.wait(15)
            assert code == 0, err.read_text()[-2000:]
    return json.loads((workspace / "jobs" / job_id / "app" / "report.json").read_text())


def test_the_kits_private_key_is_0600_and_owned_by_the_site_user(provisioned: Any) -> None:
    key = load_kit(provisioned.kits["site-1"]).key_path
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def test_user_code_run_as_nobody_reads_none_of_the_sites_secrets(
    provisioned: Any, tmp_path: Path, open_workspace: Path
) -> None:
    report = _run_probe(provisioned, tmp_path, open_workspace, "nobody")

    assert report["uid"] == pwd.getpwnam("nobody").pw_uid
    assert "key by its path" in report["tried"] and "/proc/<site>/fd" in report["tried"]
    assert any("command line" in what for what in report["tried"])  # it found the kit
    assert report["read"] == []
    assert report["inherited_fds"] == []
    assert report["env_hits"] == [] and report["argv_hits"] == []
    assert report["workspace_hits"] == []


def test_user_code_run_as_the_sites_own_user_gets_no_secret_from_the_site(
    provisioned: Any, tmp_path: Path, open_workspace: Path
) -> None:
    """What a site that is not root gives its user code, shown with a root site that
    allows root explicitly: nothing in the environment, argv, inherited descriptors or
    the workspace. The key file itself stays readable by path: same user."""
    report = _run_probe(provisioned, tmp_path, open_workspace, "root")

    assert report["uid"] == 0
    assert report["inherited_fds"] == []
    assert report["env_hits"] == [] and report["argv_hits"] == []
    assert report["workspace_hits"] == []
    assert "key by its path" in report["read"]  # the limit docs/security.md states


def test_a_root_site_without_run_user_code_as_refuses_to_start(
    provisioned: Any, tmp_path: Path
) -> None:
    kit = site_kit(provisioned, tmp_path / "kits", "site-1")
    settings = json.loads((kit / "local" / "settings.json").read_text())
    del settings["run_user_code_as"]
    (kit / "local" / "settings.json").write_text(json.dumps(settings))
    with SiteProcess(kit, "127.0.0.1:9") as site:
        assert site.proc.wait(20) == 2
        text = site.stderr()
    assert "this site runs as root" in text and "'run_user_code_as'" in text
    assert '"nobody"' in text


def test_a_workspace_the_user_cannot_reach_is_refused_at_start(
    provisioned: Any, tmp_path: Path
) -> None:
    kit = site_kit(provisioned, tmp_path / "kits", "site-1", run_user_code_as="nobody")
    with SiteProcess(kit, "127.0.0.1:9") as site:  # its workspace is in the 0700 kit
        assert site.proc.wait(20) == 2
        text = site.stderr()
    assert "user code runs as nobody" in text and "cannot reach the site's workspace" in text
    assert "--workspace" in text
