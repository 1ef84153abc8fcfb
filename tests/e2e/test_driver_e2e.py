"""The Driver API end to end: a real server, three real site processes running a Flower-style
ClientApp, and the Session's Driver (docs/driver.md).

The project has three sites (the suite's shared project has two), provisioned once for
this module by our own provisioning.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flare_admin import (
    AuthorizationError,
    ConfigsRecord,
    ErrorCode,
    MessageType,
    RecordSet,
    new_secure_session,
)
from flare_admin.driver_cli import main as driver_main
from flare_protocol.models import load_params
from tests.e2e.jobs_helpers import ADMIN, Cluster, kill_pids
from tests.server_harness import REPO, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

SITES = ("site-1", "site-2", "site-3")
EXAMPLES = REPO / "examples"

PROJECT = """\
api_version: 3
name: driverproj
description: three sites for the Driver API tests
participants:
  - name: localhost
    type: server
    org: nvidia
    fed_learn_port: 8102
    admin_port: 8103
    host_names: [127.0.0.1]
  - {name: site-1, type: client, org: org_a}
  - {name: site-2, type: client, org: org_b}
  - {name: site-3, type: client, org: org_b}
  - {name: admin@org_a.com, type: admin, org: org_a, role: project_admin}
  - {name: lead@org_a.com, type: admin, org: org_a, role: lead}
  - {name: member@org_b.com, type: admin, org: org_b, role: member}
"""

#: The example's ClientApp plus test handlers: a query echoes its config, "query.sleep"
#: sleeps as long as it is told.
TEST_CLIENT = textwrap.dedent(
    """
    import time
    from client_app import app
    from flare_site.client import ConfigsRecord, Message, RecordSet

    @app.query()
    def echo(msg, context):
        config = dict(msg.content.configs_records["c"])
        config["site"] = context.node_config["site-name"]
        return Message(RecordSet({"c": ConfigsRecord(config)}), reply_to=msg)

    @app.query("sleep")
    def sleep(msg, context):
        time.sleep(float(msg.content.configs_records["c"]["seconds"]))
        return Message(RecordSet(), reply_to=msg)

    if __name__ == "__main__":
        app.run()
    """
)

#: A ServerApp that asks every site to sleep, for the Ctrl-C test.
SLOW_APP = textwrap.dedent(
    """
    from flare_admin import ConfigsRecord, RecordSet, ServerApp

    app = ServerApp()

    @app.main()
    def main(driver, context):
        content = RecordSet({"c": ConfigsRecord({"seconds": 120})})
        messages = [driver.create_message(content, "query.sleep", n) for n in driver.get_node_ids()]
        driver.send_and_receive(messages)
    """
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from provisioning import provision

    root = tmp_path_factory.mktemp("driverproj")
    (root / "project.yml").write_text(PROJECT)
    return provision(root / "project.yml", root / "workspace")


@pytest.fixture(scope="module")
def cluster(project: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Cluster(project, tmp_path_factory.mktemp("cluster"), SITES) as c:
        yield c


def example_job(root: Path, name: str = "driver-fedavg", **server: Any) -> Path:
    """A copy of an example's job folder with the test client app (and server config
    changes: ``server`` keys replace the example's)."""
    job = root / name
    if job.exists():
        shutil.rmtree(job)
    shutil.copytree(EXAMPLES / name, job)
    (job / "app/custom/test_client.py").write_text(TEST_CLIENT)
    client = {"executor": "script", "script": "custom/test_client.py"}
    (job / "app/config/config_fed_client.json").write_text(json.dumps(client))
    (job / "meta.json").write_text(
        json.dumps({"name": name, "min_clients": 3, "deploy_map": {"app": ["@ALL"]}})
    )
    if server:
        path = job / "app/config/config_fed_server.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **server}))
    return job


def submitted(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr().out
    return out.split("submitted job ", 1)[1].split()[0]


def test_driver_fedavg_gives_the_built_in_fedavgs_global_model(
    cluster: Any, project: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    driven = example_job(tmp_path / "driver")
    kit = str(project.kits[ADMIN])
    code = driver_main(
        ["run", "server_app:app", "--kit", kit, "--job", str(driven),
         "--server", cluster.server.admin_address, "--app-dir", str(driven), "--wait", "60"]
    )  # fmt: skip
    assert code == 0
    driver_job = submitted(capsys)
    built_in = example_job(tmp_path / "builtin")
    (built_in / "app/config/config_fed_server.json").write_text(
        json.dumps(
            {"workflow": "fedavg", "num_rounds": 3, "initial_model": "models/initial_model.npz"}
        )
    )
    job = cluster.submit(built_in)
    assert cluster.wait_done(job, timeout=120)["status"] == "FINISHED:COMPLETED"
    s = cluster.session
    ours = load_params(s.download_model(driver_job, tmp_path / "driver.npz"))
    theirs = load_params(s.download_model(job, tmp_path / "builtin.npz"))
    assert ours.keys() == theirs.keys() == {"w", "b"}
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype == np.float64
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-12, atol=1e-14)
    assert np.abs(ours["w"] - [1.5, -2.0, 0.5, 3.0]).max() < 1.0  # it did learn
    log = s.get_job_messages(driver_job)
    assert [r.event for r in log].count("sent") == 9 and [r.event for r in log].count("reply") == 9
    metrics = s.get_job_metrics(driver_job, key="train_mse")
    assert {r.site for r in metrics} == set(SITES) and {r.round for r in metrics} == {1, 2, 3}


def test_per_site_configs_arrive_at_the_right_sites(cluster: Any, tmp_path: Path) -> None:
    s = cluster.session
    job = s.submit_job(example_job(tmp_path))
    driver = s.get_driver(job, timeout=60)
    names = driver.node_names
    assert set(names.values()) == set(SITES)
    messages = [
        driver.create_message(
            RecordSet({"c": ConfigsRecord({"lr": 0.01 * i, "for": names[node]})}),
            MessageType.QUERY,
            node,
            group_id="1",
        )
        for i, node in enumerate(driver.get_node_ids(), 1)
    ]
    sent = {m.metadata.dst_node_id: dict(m.content["c"]) for m in messages}
    replies = driver.send_and_receive(messages, timeout=60)
    assert len(replies) == 3 and all(r.has_content() for r in replies)
    for reply in replies:
        echoed = dict(reply.content["c"])
        node = reply.metadata.src_node_id
        assert echoed["site"] == names[node] == echoed["for"]
        assert echoed["lr"] == sent[node]["lr"]
    assert driver.finish().status == "FINISHED:COMPLETED"


def test_the_sampling_example_runs_with_flare_driver_run(
    cluster: Any, project: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = example_job(tmp_path, "driver-sampling")
    code = driver_main(
        ["run", "server_app:app", "--kit", str(project.kits[ADMIN]), "--job", str(job),
         "--server", cluster.server.admin_address, "--app-dir", str(job)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = out.split("submitted job ", 1)[1].split()[0]
    assert "round 2: evaluated on 3 sites" in out and "round 4: evaluated on 3 sites" in out
    log = cluster.session.get_job_messages(job_id, event="sent")
    trained = [r for r in log if r.message_type == "train"]
    assert {r.group_id for r in trained} == {"1", "2", "3", "4"}
    assert all(2 <= sum(r.group_id == g for r in trained) < 3 for g in "1234")  # a sample
    assert [r.group_id for r in log if r.message_type == "evaluate"] == ["2"] * 3 + ["4"] * 3
    assert cluster.session.get_job_meta(job_id).status == "FINISHED:COMPLETED"


def test_an_exception_in_the_server_app_fails_the_job_with_its_traceback(
    cluster: Any, project: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken_app.py").write_text(
        "from flare_admin import ServerApp\napp = ServerApp()\n\n"
        "@app.main()\ndef main(driver, context):\n    raise ValueError('no data for round 1')\n"
    )
    code = driver_main(
        ["run", "broken_app:app", "--kit", str(project.kits[ADMIN]),
         "--job", str(example_job(tmp_path)), "--server", cluster.server.admin_address,
         "--app-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 1
    job = submitted(capsys)
    summary = cluster.session.get_job_summary(job)
    assert summary["status"] == "FINISHED:EXECUTION_EXCEPTION"
    assert "Traceback" in summary["reason"] and "no data for round 1" in summary["reason"]


def test_a_driver_that_reconnects_pulls_the_replies_it_missed(
    cluster: Any, project: Any, tmp_path: Path
) -> None:
    address, kit = cluster.server.admin_address, project.kits[ADMIN]
    with new_secure_session(ADMIN, kit, server_address=address) as first:
        job = first.submit_job(example_job(tmp_path))
        driver = first.get_driver(job, timeout=60)
        content = RecordSet({"c": ConfigsRecord({"round": 7})})
        ids = driver.push_messages(
            [driver.create_message(content, "query", n) for n in driver.get_node_ids()]
        )
    # the first driver is gone before any reply arrived; a new session takes over
    with new_secure_session(ADMIN, kit, server_address=address) as second:
        wait_until(lambda: len(second.get_job_messages(job, event="reply")) == 3, timeout=60)
        again = second.get_driver(job, timeout=10)
        replies = again.pull_messages(ids)
        assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(ids)
        assert {r.content["c"]["site"] for r in replies} == set(SITES)
        assert again.pull_messages(ids) == []  # each reply once
        assert again.finish().status == "FINISHED:COMPLETED"


def test_a_member_cannot_get_a_driver_for_someone_elses_job(
    cluster: Any, project: Any, tmp_path: Path
) -> None:
    job = cluster.session.submit_job(example_job(tmp_path))
    member = "member@org_b.com"
    with new_secure_session(
        member, project.kits[member], server_address=cluster.server.admin_address
    ) as s:
        with pytest.raises(AuthorizationError, match="member@org_b.com .* may not drive"):
            s.get_driver(job, timeout=30)
    cluster.session.get_driver(job, timeout=60).finish("ABORTED")


def test_a_site_killed_mid_round_yields_an_error_reply_when_the_ttl_ends(
    project: Any, tmp_path: Path
) -> None:
    # A long reconnect grace: the killed site is not yet counted lost when the TTL ends.
    with Cluster(project, tmp_path / "c", SITES, reconnect_grace=120.0) as cluster:
        s = cluster.session
        job = s.submit_job(example_job(tmp_path))
        driver = s.get_driver(job, timeout=60)
        by_name = {name: node for node, name in driver.node_names.items()}
        messages = [
            driver.create_message(
                RecordSet({"c": ConfigsRecord({"seconds": 60 if name == "site-3" else 0})}),
                "query.sleep",
                node,
                ttl=6,
            )
            for name, node in by_name.items()
        ]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(driver.send_and_receive, messages, timeout=90)
            wait_until(lambda: len(s.get_job_messages(job, event="reply")) == 2, timeout=30)
            pids = cluster.site_job_pids("site-3")
            cluster.sites["site-3"].proc.kill()  # mid-round: its user code is on the message
            kill_pids(pids)
            replies = {r.metadata.src_node_id: r for r in waiting.result(90)}
        lost = replies[by_name["site-3"]]
        assert lost.has_error() and lost.error.code == ErrorCode.TTL_EXPIRED
        assert "site-3 did not reply within the message's ttl of 6 s" in lost.error.reason
        assert all(replies[by_name[n]].has_content() for n in ("site-1", "site-2"))
        assert s.get_job_meta(job).status == "RUNNING"  # the driver decides what follows


def test_flare_driver_run_stops_the_job_as_aborted_on_ctrl_c(
    cluster: Any, project: Any, tmp_path: Path
) -> None:
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    job = example_job(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flare_cli.main", "driver", "run", "slow_app:app",
         "--kit", str(project.kits[ADMIN]), "--job", str(job),
         "--server", cluster.server.admin_address, "--app-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("submitted job "), first
        job_id = first.split()[-1]
        wait_until(
            lambda: len(cluster.session.get_job_messages(job_id, event="sent")) == 3, timeout=60
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    assert f"job {job_id} aborted" in err and "Traceback" not in err
    meta = cluster.session.wait_for_job(job_id, timeout=60)
    assert meta.status == "FINISHED:ABORTED"
