"""``flare server start`` as a real process: start-up checks, SIGTERM, and kill -9 recovery."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time

import grpc
import pytest

import tests.kit_factory as kf
from flare_protocol._generated import admin_pb2, common_pb2
from flare_server.cli import main
from flare_server.jobs import JobStore
from tests.flare_server.conftest import job_zip
from tests.flare_server.site_client import FakeSite
from tests.flare_server.test_server_jobs import submit
from tests.server_harness import ServerProcess, admin_stub, wait_until

ADMIN = "admin@org_a.com"


def test_start_refuses_a_key_readable_by_others(provisioned, tmp_path, capsys):
    kit = kf.loose_key_kit(provisioned, "localhost", tmp_path)
    assert main(["start", str(kit), "--workspace", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert "server.key" in err and "chmod 600" in err
    assert "Traceback" not in err


def test_start_refuses_a_tampered_kit_naming_the_file(provisioned, tmp_path, capsys):
    kit = kf.copy_kit(provisioned, "localhost", tmp_path)
    config = kit / "startup" / "fed_server.json"
    config.write_text(config.read_text().replace('"admin_port": 8103', '"admin_port": 9999'))
    assert main(["start", str(kit), "--workspace", str(tmp_path / "ws")]) == 2
    assert "fed_server.json" in capsys.readouterr().err


def test_start_refuses_a_site_kit(provisioned, tmp_path, capsys):
    assert main(["start", str(provisioned.kits["site-1"])]) == 2
    assert "server kit is needed" in capsys.readouterr().err


def test_start_refuses_a_bad_setting_naming_the_key(provisioned, tmp_path, capsys):
    kit = kf.copy_kit(provisioned, "localhost", tmp_path)
    (kit / "local" / "settings.json").write_text(json.dumps({"heartbeat_timeout": "soon"}))
    assert main(["start", str(kit), "--workspace", str(tmp_path / "ws")]) == 2
    assert "heartbeat_timeout" in capsys.readouterr().err


def test_server_process_serves_and_stops_gracefully_on_sigterm(provisioned, kits, tmp_path):
    ws = tmp_path / "ws"
    with ServerProcess(kits["localhost"], ws) as proc:
        assert proc.ready["admin_port"] > 0 and proc.ready["fed_learn_port"] > 0
        stub, channel = admin_stub(kits[ADMIN], proc.admin_address)
        with channel:
            assert stub.Hello(common_pb2.Empty(), timeout=5).project == "testproj"
        assert proc.terminate() == 0
    log = (ws / "logs" / "server.log").read_text()
    assert "listening" in log and "stop requested by SIGTERM" in log and "server stopped" in log
    assert (ws / "logs" / "audit.log").exists()


def _hammer(stub, acked: dict[str, str], stop: threading.Event) -> None:
    """Submit jobs and abort some, recording what the server acknowledged."""
    rng = random.Random(7)
    while not stop.is_set():
        try:
            if acked and rng.random() < 0.3:
                job_id = rng.choice(
                    [j for j, s in acked.items() if s != "FINISHED:ABORTED"] or [""]
                )
                if job_id:
                    reply = stub.AbortJob(admin_pb2.JobRequest(job_id=job_id), timeout=5)
                    acked[job_id] = json.loads(reply.meta_json)["status"]
                continue
            runnable = rng.random() < 0.5  # min_clients 1 is dispatched to the connected site
            payload = job_zip(min_clients=1 if runnable else 5)
            acked[submit(stub, payload)] = "SUBMITTED"
        except grpc.RpcError:
            return


@pytest.mark.parametrize("cycle", range(3))
def test_kill_9_loses_no_acknowledged_job_and_ends_in_flight_ones_abnormal(kits, tmp_path, cycle):
    ws = tmp_path / "ws"
    acked: dict[str, str] = {}
    proc = ServerProcess(kits["localhost"], ws).start()
    try:
        site = FakeSite(kits["site-1"], proc.site_address).open()
        stub, channel = admin_stub(kits[ADMIN], proc.admin_address)
        dispatched = submit(stub, job_zip(min_clients=1))  # runnable on the connected site
        wait_until(
            lambda: (
                json.loads(
                    stub.GetJobMeta(admin_pb2.JobRequest(job_id=dispatched), timeout=5).meta_json
                )["status"]
                == "DISPATCHED"
            )
        )
        stop = threading.Event()
        worker = threading.Thread(target=_hammer, args=(stub, acked, stop))
        worker.start()
        wait_until(lambda: len(acked) >= 3, timeout=10)  # the load got going
        time.sleep(0.3 * random.Random(cycle).random())  # reproducible per cycle
        proc.kill()
        stop.set()
        worker.join(10)
        site.close()
        channel.close()
    finally:
        proc.kill()
    assert len(acked) >= 3, "the load did not get going"

    restarted = ServerProcess(kits["localhost"], ws).start()
    try:
        stub, channel = admin_stub(kits[ADMIN], restarted.admin_address)
        with channel:
            metas = {
                job_id: json.loads(
                    stub.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5).meta_json
                )
                for job_id in [*acked, dispatched]
            }
            listed = {
                j.job_id: j.status
                for j in stub.ListJobs(admin_pb2.ListJobsRequest(), timeout=5).jobs
            }
    finally:
        restarted.terminate()
    for job_id, status in acked.items():
        meta = metas[job_id]
        if status == "FINISHED:ABORTED":
            assert meta["status"] == "FINISHED:ABORTED"
        else:
            assert meta["status"] in ("SUBMITTED", "FINISHED:ABORTED", "FINISHED:ABNORMAL")
        if meta["status"] == "FINISHED:ABNORMAL":
            assert "server restarted" in meta["status_history"][-1]["reason"]
            assert any(h["status"] == "DISPATCHED" for h in meta["status_history"])
    assert not [s for s in listed.values() if s in ("DISPATCHED", "RUNNING")]
    assert metas[dispatched]["status"] == "FINISHED:ABNORMAL"
    store = JobStore.open(ws / "jobs")
    try:
        for row in store.list():  # acknowledged or not: every listed job is whole
            meta = store.get(row.job_id)
            assert store.job_archive(row.job_id).stat().st_size == meta["archive_size"]
        assert not [p for p in (ws / "jobs" / "tmp").iterdir()]
    finally:
        store.close()
    shutil.rmtree(ws, ignore_errors=True)


def test_sigterm_lets_an_in_flight_upload_finish_and_refuses_new_calls(kits, tmp_path):
    from tests.flare_server.test_server_jobs import chunks

    messages = list(chunks(job_zip(min_clients=2)))
    release = threading.Event()

    def slow_upload():
        yield messages[0]
        release.wait(10)
        yield from messages[1:]

    with ServerProcess(kits["localhost"], tmp_path / "ws") as proc:
        stub, channel = admin_stub(kits[ADMIN], proc.admin_address)
        with channel:
            stub.Hello(common_pb2.Empty(), timeout=5)
            future = stub.SubmitJob.future(slow_upload(), timeout=20)
            time.sleep(0.3)
            proc.proc.send_signal(15)
            wait_until(
                lambda: (
                    "stop requested by SIGTERM"
                    in (tmp_path / "ws" / "logs" / "server.log").read_text()
                )
            )
            other, other_channel = admin_stub(kits[ADMIN], proc.admin_address)
            with other_channel, pytest.raises(grpc.RpcError) as info:
                other.Hello(common_pb2.Empty(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            release.set()
            job_id = future.result(timeout=15).job_id
        assert proc.proc.wait(15) == 0
    store = JobStore.open(tmp_path / "ws" / "jobs")
    try:
        assert store.get(job_id)["status"] == "SUBMITTED"
    finally:
        store.close()


def test_a_failing_store_is_an_internal_error_without_a_traceback(server, kits):
    stub, channel = admin_stub(kits[ADMIN], server.admin_address)
    with channel:
        job_id = submit(stub, job_zip(min_clients=2))
        server.call(lambda: server.server.store.close())
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5)
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "Traceback" not in info.value.details() and "log" in info.value.details()
    log = (server.server.workspace / "logs" / "server.log").read_text()
    assert "unexpected error in get_job_meta" in log


def test_a_port_in_use_is_a_clear_error(server, server_kit, tmp_path):
    from flare_protocol.errors import FlareError
    from tests.server_harness import ServerThread

    clash = ServerThread(server_kit, tmp_path / "ws2", admin_port=server.server.admin_port)
    with pytest.raises(FlareError, match=f"cannot listen on 127.0.0.1:{server.server.admin_port}"):
        clash.start()
    clash.stop()
    # the failed start released the store: it can be opened again
    JobStore.open(tmp_path / "ws2" / "jobs").close()


def test_the_restart_command_restarts_the_server_in_place(kits, tmp_path):
    with ServerProcess(kits["localhost"], tmp_path / "ws") as proc:
        stub, channel = admin_stub(kits[ADMIN], proc.admin_address)
        with channel:
            job_id = submit(stub, job_zip(min_clients=2))
            proc.ready_file.unlink()
            reply = stub.Command(
                admin_pb2.CommandRequest(command="restart", args_json='{"target_type": "server"}'),
                timeout=5,
            )
        assert json.loads(reply.result_json) == {"server": "restarting"}
        wait_until(proc.ready_file.exists, timeout=10)
        before = dict(proc.ready)
        proc.ready = json.loads(proc.ready_file.read_text())
        assert proc.proc.poll() is None  # the same process
        # ... on the same ports, although they were first chosen with port 0
        assert (proc.ready["admin_port"], proc.ready["fed_learn_port"]) == (
            before["admin_port"],
            before["fed_learn_port"],
        )
        stub, channel = admin_stub(kits[ADMIN], proc.admin_address)
        with channel:
            meta = stub.GetJobMeta(admin_pb2.JobRequest(job_id=job_id), timeout=5)
        assert json.loads(meta.meta_json)["status"] == "SUBMITTED"
        assert proc.terminate() == 0
