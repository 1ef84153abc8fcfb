"""The job runner at the wire: a real server, a test site speaking the site protocol by hand."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import grpc
import numpy as np
import pytest

from flare_protocol._generated import admin_pb2, common_pb2, site_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.models import dump_params, load_params
from flare_protocol.wire_errors import decode_detail
from tests.flare_server.conftest import job_files, job_zip
from tests.flare_server.site_client import FakeSite
from tests.flare_server.test_server_jobs import submit
from tests.server_harness import ServerThread, admin_stub, wait_until

ADMIN = "admin@org_a.com"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(server_kit, tmp_path):
    with ServerThread(
        server_kit,
        tmp_path / "ws",
        heartbeat_interval=0.2,
        heartbeat_timeout=1.0,
        reconnect_grace=0.5,
        deploy_timeout=3.0,
        log_wait=1.0,
    ) as srv:
        yield srv


@pytest.fixture
def admin(server, kits):
    stub, channel = admin_stub(kits[ADMIN], server.admin_address)
    with channel:
        yield stub


def _one_site_job(**server_config) -> bytes:
    files = job_files(deploy_map={"app": ["server", "site-1"]})
    config = {"workflow": "fedavg", "num_rounds": 1, "round_timeout": 10, **server_config}
    files["app/config/config_fed_server.json"] = json.dumps(config).encode()
    return job_zip(files=files)


def _deployed_one_site_job(srv, admin, site) -> str:
    """Submit a one-round job for site-1 and confirm its deployment as the site would."""
    wait_until(lambda: len(srv.server.registry) == 1)
    job_id = submit(admin, _one_site_job())
    wait_until(lambda: _messages(site, "job.deploy"))
    _send(site, job_id, "job.status", {"status": "deployed"})
    return job_id


def _meta(admin, job_id):
    return json.loads(admin.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5).meta_json)


def _messages(site, topic):
    return [
        m.message
        for m in list(site.received)
        if m.WhichOneof("kind") == "message" and m.message.topic == topic
    ]


def _send(site, job_id, topic, body, blobs=()):
    site.outbox.put(
        site_pb2.SiteMessage(
            message=site_pb2.Envelope(
                job_id=job_id, topic=topic, body_json=json.dumps(body), blobs=list(blobs)
            )
        )
    )


def _download(site, ref, job_id):
    parts = list(site.stub.Download(site_pb2.BlobRequest(blob_id=ref.blob_id, job_id=job_id)))
    assert parts[0].WhichOneof("item") == "header"
    data = b"".join(p.data for p in parts[1:])
    assert len(data) == ref.size == parts[0].header.size
    assert hashlib.sha256(data).hexdigest() == ref.sha256 == parts[0].header.sha256
    return data


def _upload(site, data, **params):
    def gen():
        yield common_pb2.TransferChunk(
            header=common_pb2.TransferHeader(
                name="../../evil.npz",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                params=params,
            )
        )
        for i in range(0, len(data), CHUNK_SIZE):
            yield common_pb2.TransferChunk(data=data[i : i + CHUNK_SIZE])

    return site.stub.Upload(gen(), timeout=10)


def _error(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), decode_detail(info.value.trailing_metadata())


def test_a_job_runs_through_the_site_protocol_and_its_blobs_stay_with_its_site(server, kits, admin):
    with (
        FakeSite(kits["site-1"], server.site_address) as s1,
        FakeSite(kits["site-2"], server.site_address) as s2,
    ):
        wait_until(lambda: len(server.server.registry) == 2)
        job_id = submit(admin, _one_site_job())
        deploy = wait_until(lambda: _messages(s1, "job.deploy"))[0]
        body = json.loads(deploy.body_json)
        assert body["client_config"] == {"executor": "script", "script": "custom/train.py"}
        assert body["total_rounds"] == 1
        ref = deploy.blobs[0]
        app = zipfile.ZipFile(io.BytesIO(_download(s1, ref, job_id)))
        assert sorted(app.namelist()) == [
            "config/config_fed_client.json",
            "config/config_fed_server.json",
            "custom/train.py",
        ]
        assert not _messages(s2, "job.deploy")
        # Not for another site, not under another job id.
        code, detail = _error(
            lambda: list(s2.stub.Download(site_pb2.BlobRequest(blob_id=ref.blob_id, job_id=job_id)))
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "not served" in detail.message
        other = "00000000-0000-4000-8000-000000000000"
        code, _ = _error(
            lambda: list(s1.stub.Download(site_pb2.BlobRequest(blob_id=ref.blob_id, job_id=other)))
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT

        _send(s1, job_id, "job.status", {"status": "deployed"})
        task = wait_until(lambda: _messages(s1, "task.train"))[0]
        task_body = json.loads(task.body_json)
        assert task_body["round"] == 1 and not task.blobs  # no initial model: round 1 is empty
        assert _meta(admin, job_id)["status"] == "RUNNING"

        update = dump_params({"w": np.array([1.0, 2.0])})
        # An update for a task this site was not given, a damaged one: refused.
        code, detail = _error(
            _upload, s1, update, job_id=job_id, kind="update", task_id="r9-train-site-1"
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "not awaiting" in detail.message
        code, _ = _error(
            _upload, s2, update, job_id=job_id, kind="update", task_id=task_body["task_id"]
        )
        assert code is grpc.StatusCode.PERMISSION_DENIED
        blob = _upload(s1, update, job_id=job_id, kind="update", task_id=task_body["task_id"])
        assert blob.size == len(update)
        # Sent again (an upload cut off with its connection), up to the site's three tries.
        for _ in range(2):
            _upload(s1, update, job_id=job_id, kind="update", task_id=task_body["task_id"])
        code, detail = _error(
            _upload, s1, update, job_id=job_id, kind="update", task_id=task_body["task_id"]
        )
        assert "already uploaded 3 times" in detail.message
        work = server.server.store.job_dir(job_id) / "work"
        assert not list(work.rglob("evil*")) and not (work.parent.parent / "evil.npz").exists()
        _send(
            s1,
            job_id,
            "metrics",
            {"round": None, "key": "loss", "value": 0.5, "step": 3, "time": 1.0},
        )
        _send(
            s1,
            job_id,
            "task.result",
            {
                "task_id": task_body["task_id"],
                "round": 1,
                "kind": "train",
                "params_type": "FULL",
                "num_examples": 7,
                "metrics": {},
            },
            [blob],
        )
        wait_until(lambda: _messages(s1, "job.end"))
        log = _upload(s1, b"site log\n", job_id=job_id, kind="log")
        _send(s1, job_id, "job.log", {}, [log])
        wait_until(lambda: _meta(admin, job_id)["status"] == "FINISHED:COMPLETED")
    result = server.server.store.result_dir(job_id)
    assert load_params(result / "global_model.npz")["w"].tolist() == [1.0, 2.0]
    assert (result / "logs" / "site-1.log").read_bytes() == b"site log\n"
    rows = [json.loads(x) for x in (result / "metrics.jsonl").read_text().splitlines()]
    assert rows == [
        {"site": "site-1", "round": 1, "key": "loss", "value": 0.5, "step": 3, "time": 1.0},
        {"complete": True},
    ]
    assert not (server.server.store.job_dir(job_id) / "work").exists()


@pytest.mark.parametrize("budget", [1, 1 << 30], ids=["to-a-file", "in-memory"])
def test_an_update_aggregates_the_same_whether_it_was_held_in_memory_or_in_a_file(
    server_kit, kits, tmp_path, budget
):
    with ServerThread(server_kit, tmp_path / "ws", update_memory_bytes=budget) as srv:
        stub, channel = admin_stub(kits[ADMIN], srv.admin_address)
        with channel, FakeSite(kits["site-1"], srv.site_address) as s1:
            job_id = _deployed_one_site_job(srv, stub, s1)
            task = json.loads(wait_until(lambda: _messages(s1, "task.train"))[0].body_json)
            weights = np.linspace(-1, 1, 300_000, dtype=np.float32).reshape(600, 500)
            update = dump_params({"w": weights, "b": np.arange(7)})
            blob = _upload(s1, update, job_id=job_id, kind="update", task_id=task["task_id"])
            in_memory = srv.call(lambda: srv.server.runner.blobs.memory_used)
            assert in_memory == (len(update) if budget > 1 else 0)
            body = {"task_id": task["task_id"], "round": 1, "kind": "train", "num_examples": 3}
            _send(s1, job_id, "task.result", {**body, "params_type": "FULL"}, [blob])
            wait_until(lambda: _messages(s1, "job.end"))
            _send(s1, job_id, "job.log", {})
            wait_until(lambda: _meta(stub, job_id)["status"] == "FINISHED:COMPLETED")
            assert srv.call(lambda: srv.server.runner.blobs.memory_used) == 0
            # Idle for a while (here: at once), the server gives its model buffers back.
            runner = srv.server.runner
            srv.call(lambda: runner.trim_when_idle(0.0))
            wait_until(lambda: srv.call(lambda: runner.buffers.held_bytes) == 0)
        final = load_params(srv.server.store.result_dir(job_id) / "global_model.npz")
    np.testing.assert_array_equal(final["w"], weights)
    np.testing.assert_array_equal(final["b"], np.arange(7))


def test_a_deployment_refused_by_a_site_ends_failed_to_run_naming_it(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address) as s1:
        wait_until(lambda: len(server.server.registry) == 1)
        job_id = submit(admin, _one_site_job())
        wait_until(lambda: _messages(s1, "job.deploy"))
        _send(s1, job_id, "job.status", {"status": "failed", "error": "disk full"})
        wait_until(lambda: _meta(admin, job_id)["status"] == "FINISHED:FAILED_TO_RUN")
        reason = _meta(admin, job_id)["status_history"][-1]["reason"]
        assert "site-1: disk full" in reason


def _two_site_job(**meta) -> bytes:
    files = job_files(deploy_map={"app": ["@ALL"]}, **meta)
    config = {"workflow": "fedavg", "num_rounds": 1, "round_timeout": 10}
    files["app/config/config_fed_server.json"] = json.dumps(config).encode()
    return job_zip(files=files)


def test_a_site_failing_to_deploy_is_left_out_while_min_clients_remain(server, kits, admin):
    with (
        FakeSite(kits["site-1"], server.site_address) as s1,
        FakeSite(kits["site-2"], server.site_address) as s2,
    ):
        wait_until(lambda: len(server.server.registry) == 2)
        job_id = submit(admin, _two_site_job(min_clients=1))
        wait_until(lambda: _messages(s1, "job.deploy") and _messages(s2, "job.deploy"))
        _send(s2, job_id, "job.status", {"status": "failed", "error": "disk full"})
        _send(s1, job_id, "job.status", {"status": "deployed"})
        task = json.loads(wait_until(lambda: _messages(s1, "task.train"))[0].body_json)
        assert wait_until(lambda: _messages(s2, "job.abort"))[0].job_id == job_id
        assert not _messages(s2, "task.train")
        meta = _meta(admin, job_id)
        assert meta["status"] == "RUNNING"
        assert "deployment failed on site-2" in meta["status_history"][-1]["reason"]
        update = dump_params({"w": np.array([3.0])})
        blob = _upload(s1, update, job_id=job_id, kind="update", task_id=task["task_id"])
        body = {"task_id": task["task_id"], "round": 1, "kind": "train", "num_examples": 1}
        _send(s1, job_id, "task.result", {**body, "params_type": "FULL", "metrics": {}}, [blob])
        wait_until(lambda: _messages(s1, "job.end"))
        _send(s1, job_id, "job.log", {})
        wait_until(lambda: _meta(admin, job_id)["status"] == "FINISHED:COMPLETED")
    summary = json.loads((server.server.store.result_dir(job_id) / "summary.json").read_text())
    assert summary["sites"] == ["site-1"]
    assert summary["deploy_failures"] == {"site-2": "disk full"}


def test_a_failed_deployment_ends_the_job_when_too_few_sites_are_left(server, kits, admin):
    with (
        FakeSite(kits["site-1"], server.site_address) as s1,
        FakeSite(kits["site-2"], server.site_address),
    ):
        wait_until(lambda: len(server.server.registry) == 2)
        job_id = submit(admin, _two_site_job(min_clients=2))
        wait_until(lambda: _messages(s1, "job.deploy"))
        _send(s1, job_id, "job.status", {"status": "failed", "error": "no GPU"})
        # The end comes without waiting for site-2: the job cannot reach min_clients.
        wait_until(lambda: _meta(admin, job_id)["status"] == "FINISHED:FAILED_TO_RUN", 2)
        reason = _meta(admin, job_id)["status_history"][-1]["reason"]
        assert "site-1: no GPU" in reason and "1 site(s) left, the job needs 2" in reason


def test_a_mandatory_site_failing_to_deploy_ends_the_job(server, kits, admin):
    with (
        FakeSite(kits["site-1"], server.site_address) as s1,
        FakeSite(kits["site-2"], server.site_address),
    ):
        wait_until(lambda: len(server.server.registry) == 2)
        job_id = submit(admin, _two_site_job(min_clients=1, mandatory_clients=["site-1"]))
        wait_until(lambda: _messages(s1, "job.deploy"))
        _send(s1, job_id, "job.status", {"status": "failed", "error": "no GPU"})
        wait_until(lambda: _meta(admin, job_id)["status"] == "FINISHED:FAILED_TO_RUN", 2)
        assert (
            "mandatory_clients site-1 failed"
            in (_meta(admin, job_id)["status_history"][-1]["reason"])
        )


def test_a_deployment_nobody_answers_times_out_failed_to_run(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address):
        wait_until(lambda: len(server.server.registry) == 1)
        job_id = submit(admin, _one_site_job())
        wait_until(lambda: _meta(admin, job_id)["status"] == "FINISHED:FAILED_TO_RUN", 10)
        assert (
            "no answer to the deployment within 3 s"
            in (_meta(admin, job_id)["status_history"][-1]["reason"])
        )


def test_a_site_reporting_a_job_the_server_does_not_run_is_told_to_abort_it(server, kits):
    stale = "11111111-2222-4333-8444-555555555555"
    site = FakeSite(kits["site-1"], server.site_address).open(running_jobs=(stale,))
    try:
        abort = wait_until(lambda: _messages(site, "job.abort"))[0]
        assert abort.job_id == stale
    finally:
        site.close()


def test_a_job_a_site_still_reports_after_its_end_is_aborted_there_once(server, kits):
    """Issue 8 item 7: the site's job.end was lost, so its heartbeats keep listing the job."""
    stale = "11111111-2222-4333-8444-555555555555"
    site = FakeSite(kits["site-1"], server.site_address).open()
    try:
        wait_until(lambda: site.acks > 0)
        site.heartbeat_jobs = (stale,)
        (abort,) = wait_until(lambda: _messages(site, "job.abort"))
        assert abort.job_id == stale
        acks = site.acks
        wait_until(lambda: site.acks > acks + 5)  # more heartbeats listing it: told once
        assert len(_messages(site, "job.abort")) == 1
    finally:
        site.close()


def test_result_readers_are_authorized_like_download_and_page(server, kits, admin):
    job_id = submit(admin, job_zip())
    folder = server.server.store.result_dir(job_id)
    lines = [
        json.dumps(
            {
                "site": f"site-{i % 2 + 1}",
                "round": 1,
                "key": "k",
                "value": i,
                "step": i,
                "time": 0.0,
            }
        )
        for i in range(5)
    ]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"site": "torn')

    def command(stub, name, **args):
        reply = stub.Command(
            admin_pb2.CommandRequest(command=name, args_json=json.dumps(args)), timeout=5
        )
        return json.loads(reply.result_json)

    page = command(admin, "job_metrics", job_id=job_id, limit=2)
    assert [r["value"] for r in page["rows"]] == [0, 1] and page["next_offset"] == 2
    page = command(admin, "job_metrics", job_id=job_id, site="site-1", offset=1)
    assert [r["value"] for r in page["rows"]] == [2, 4] and page["next_offset"] is None
    assert command(admin, "job_validations", job_id=job_id) == {"rows": [], "next_offset": None}
    code, detail = _error(command, admin, "job_summary", job_id=job_id)
    assert detail.type == "JobNotDone"
    other, channel = admin_stub(kits["lead@org_b.com"], server.admin_address)
    with channel:
        code, detail = _error(command, other, "job_metrics", job_id=job_id)
        assert code is grpc.StatusCode.PERMISSION_DENIED
        code, detail = _error(
            lambda: list(other.DownloadModel(admin_pb2.ModelRequest(job_id=job_id), timeout=5))
        )
        assert code is grpc.StatusCode.PERMISSION_DENIED


def test_download_model_names_what_is_missing(server, kits, admin):
    job_id = submit(admin, job_zip())
    code, detail = _error(
        lambda: list(admin.DownloadModel(admin_pb2.ModelRequest(job_id=job_id), timeout=5))
    )
    assert detail.type == "JobNotDone" and "has not finished" in detail.message
    folder = server.server.store.result_dir(job_id)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / "round_001.npz").write_bytes(dump_params({"w": np.ones(3)}))
    code, detail = _error(
        lambda: list(admin.DownloadModel(admin_pb2.ModelRequest(job_id=job_id, round=4), timeout=5))
    )
    assert detail.type == "InvalidArgumentError" and "rounds: 1" in detail.message
    parts = list(admin.DownloadModel(admin_pb2.ModelRequest(job_id=job_id, round=1), timeout=5))
    assert parts[0].header.name == "round_001.npz"
    data = b"".join(p.data for p in parts[1:])
    assert hashlib.sha256(data).hexdigest() == parts[0].header.sha256
    assert load_params(data)["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_model_source_must_have_completed(server, kits, admin):
    source = submit(admin, job_zip())
    code, detail = _error(submit, admin, job_zip(), params={"initial_model_job_id": source})
    assert detail.type == "JobNotDone" and "SUBMITTED" in detail.message
    code, detail = _error(
        submit,
        admin,
        job_zip(),
        params={"initial_model_job_id": "22222222-2222-4222-8222-222222222222"},
    )
    assert detail.type == "JobNotFound"


def test_a_server_stopping_mid_job_ends_it_abnormal_and_tells_its_sites(server_kit, kits, tmp_path):
    from flare_server.jobs import JobStore

    srv = ServerThread(server_kit, tmp_path / "ws2", heartbeat_interval=0.2, deploy_timeout=30.0)
    srv.start()
    try:
        stub, channel = admin_stub(kits[ADMIN], srv.admin_address)
        with channel, FakeSite(kits["site-1"], srv.site_address) as s1:
            job_id = _deployed_one_site_job(srv, stub, s1)
            wait_until(lambda: _messages(s1, "task.train"))
            srv.stop()
            assert [m.job_id for m in _messages(s1, "job.abort")] == [job_id]
    finally:
        srv.stop()
    with JobStore.open(tmp_path / "ws2" / "jobs") as store:
        meta = store.get(job_id)
    assert meta["status"] == "FINISHED:ABNORMAL"
    assert meta["status_history"][-1]["reason"] == "the server stopped while the job was running"


def test_a_site_at_its_max_jobs_takes_the_next_job_only_when_one_ends(server, kits, admin):
    site = FakeSite(kits["site-1"], server.site_address).open(resources={"max_jobs": "1"})
    try:
        wait_until(lambda: len(server.server.registry) == 1)
        first = submit(admin, _one_site_job())
        second = submit(admin, _one_site_job())
        wait_until(lambda: _messages(site, "job.deploy"))
        wait_until(
            lambda: (
                "at their max_jobs limit: site-1" in _meta(admin, second).get("schedule_reason", "")
            )
        )
        assert [m.job_id for m in _messages(site, "job.deploy")] == [first]
        _send(site, first, "job.status", {"status": "failed", "error": "no"})
        wait_until(lambda: len(_messages(site, "job.deploy")) == 2)
        assert _messages(site, "job.deploy")[1].job_id == second
    finally:
        site.close()


def test_an_abort_during_deployment_is_final_and_no_task_follows(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address) as s1:
        wait_until(lambda: len(server.server.registry) == 1)
        job_id = submit(admin, _one_site_job())
        wait_until(lambda: _messages(s1, "job.deploy"))
        admin.AbortJob(admin_pb2.JobRequest(job_id=job_id), timeout=5)
        _send(s1, job_id, "job.status", {"status": "deployed"})  # a late answer
        wait_until(lambda: _messages(s1, "job.end"))
        assert [m.job_id for m in _messages(s1, "job.abort")] == [job_id]
        assert not _messages(s1, "task.train")
        meta = _meta(admin, job_id)
        assert meta["status"] == "FINISHED:ABORTED"
        assert [h["status"] for h in meta["status_history"]][-2:] == [
            "DISPATCHED",
            "FINISHED:ABORTED",
        ]


def test_each_site_gets_the_app_its_deploy_map_names(server, kits, admin):
    files = {
        "meta.json": json.dumps(
            {
                "name": "two-apps",
                "min_clients": 1,
                "deploy_map": {"aggregator": ["server"], "trainer": ["site-1"]},
            }
        ).encode(),
        "aggregator/config/config_fed_server.json": json.dumps(
            {"workflow": "fedavg", "num_rounds": 1}
        ).encode(),
        "trainer/config/config_fed_client.json": json.dumps(
            {"executor": "script", "script": "custom/fit.py"}
        ).encode(),
        "trainer/custom/fit.py": b"pass\n",
    }
    with FakeSite(kits["site-1"], server.site_address) as s1:
        wait_until(lambda: len(server.server.registry) == 1)
        job_id = submit(admin, job_zip(files=files))
        deploy = wait_until(lambda: _messages(s1, "job.deploy"))[0]
        body = json.loads(deploy.body_json)
        assert body["app"] == "trainer"
        assert body["client_config"]["script"] == "custom/fit.py"
        app = zipfile.ZipFile(io.BytesIO(_download(s1, deploy.blobs[0], job_id)))
        assert sorted(app.namelist()) == ["config/config_fed_client.json", "custom/fit.py"]


def test_a_metrics_log_stops_growing_at_its_cap(tmp_path):
    from flare_server.results import JsonlWriter, read_rows

    writer = JsonlWriter(tmp_path / "m.jsonl", max_bytes=200)
    kept = [writer.append({"site": "s", "value": i}) for i in range(20)]
    writer.complete()
    assert kept.index(False) > 0 and not any(kept[kept.index(False) :])
    rows, nxt = read_rows(tmp_path / "m.jsonl")
    assert [r["value"] for r in rows] == list(range(kept.index(False))) and nxt is None
    assert writer.dropped == 20 - len(rows)


def test_a_torn_metrics_log_is_sealed_without_losing_the_marker(tmp_path):
    from flare_server.results import read_rows, seal_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"site": "a", "value": 1}\n{"site": "b", "val')
    seal_jsonl(path)
    assert path.read_text().endswith('\n{"complete": true}\n')
    assert read_rows(path) == ([{"site": "a", "value": 1}], None)


def test_a_malformed_task_result_fails_its_task_naming_the_field(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address) as s1:
        job_id = _deployed_one_site_job(server, admin, s1)
        task = json.loads(wait_until(lambda: _messages(s1, "task.train"))[0].body_json)
        _send(s1, job_id, "task.result", {"task_id": task["task_id"], "kind": "guess"})
        wait_until(lambda: _messages(s1, "job.end"))
        _send(s1, job_id, "job.log", {})
        wait_until(lambda: _meta(admin, job_id)["status"].startswith("FINISHED"))
    meta = _meta(admin, job_id)
    assert meta["status"] == "FINISHED:EXECUTION_EXCEPTION"
    reason = meta["status_history"][-1]["reason"]
    assert "its result is malformed: task.result: 'kind' must be one of" in reason


def test_an_event_no_phase_knows_ends_the_job_loudly(server, kits, admin):
    with FakeSite(kits["site-1"], server.site_address) as s1:
        job_id = _deployed_one_site_job(server, admin, s1)
        wait_until(lambda: _messages(s1, "task.train"))
        runner = server.server.runner
        server.call(lambda: runner.runs[job_id].post(("message", "site-1", None)))  # type: ignore[arg-type]
        wait_until(lambda: _meta(admin, job_id)["status"].startswith("FINISHED"))
    meta = _meta(admin, job_id)
    assert meta["status"] == "FINISHED:ABNORMAL"
    reason = meta["status_history"][-1]["reason"]
    assert reason.startswith("the server failed running the job: AssertionError: unhandled")
    log = (server.server.workspace / "logs" / "server.log").read_text()
    assert "Traceback" in log and "unhandled job event ('message', 'site-1', None)" in log
