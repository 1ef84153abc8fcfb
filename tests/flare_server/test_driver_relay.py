"""The driver relay at the wire: a real server, the real Session's Driver, and test sites
speaking the site protocol by hand (so a test can send what a real site never would: a
reply from the wrong site, a second reply, a late one, a malformed one)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from flare_admin import (
    AuthorizationError,
    ConfigsRecord,
    ErrorCode,
    InvalidArgumentError,
    JobNotRunning,
    MessageType,
    MetricsRecord,
    ParametersRecord,
    RecordSet,
    new_secure_session,
)
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.message import from_wire, node_id, npz_of, to_wire
from flare_protocol.models import load_params
from tests.flare_server.site_client import FakeSite
from tests.flare_server.test_job_runner import _messages, _send
from tests.server_harness import ServerThread, wait_until

pytestmark = pytest.mark.timeout(90)
ADMIN = "admin@org_a.com"


@pytest.fixture
def server(server_kit, tmp_path):
    with ServerThread(
        server_kit,
        tmp_path / "ws",
        heartbeat_interval=0.2,
        heartbeat_timeout=3.0,
        reconnect_grace=0.5,
        deploy_timeout=10.0,
        log_wait=1.0,
    ) as srv:
        yield srv


@pytest.fixture
def sites(server, kits):
    with (
        FakeSite(kits["site-1"], server.site_address) as s1,
        FakeSite(kits["site-2"], server.site_address) as s2,
    ):
        wait_until(lambda: len(server.server.registry) == 2)
        yield {"site-1": s1, "site-2": s2}


@pytest.fixture
def session(server, kits):
    with new_secure_session(ADMIN, kits[ADMIN], server_address=server.admin_address) as s:
        yield s


def driver_job(root: Path, workflow: str = "driver", **config: Any) -> Path:
    """A job for site-1 and site-2 whose server config is ``{"workflow": workflow, **config}``."""
    job = root / "job"
    (job / "app" / "config").mkdir(parents=True)
    (job / "app" / "custom").mkdir()
    meta = {"name": "relay", "min_clients": 2, "deploy_map": {"app": ["@ALL"]}}
    (job / "meta.json").write_text(json.dumps(meta))
    server_config = {"workflow": workflow, **config}
    if workflow != "driver":
        server_config.setdefault("num_rounds", 1)
    (job / "app/config/config_fed_server.json").write_text(json.dumps(server_config))
    client = {"executor": "script", "script": "custom/client.py"}
    (job / "app/config/config_fed_client.json").write_text(json.dumps(client))
    (job / "app/custom/client.py").write_text("print('a test site answers by hand')\n")
    return job


def deploy(session, sites, job: Path) -> str:
    """Submit ``job`` and answer its deployment as both sites would."""
    job_id = session.submit_job(job)
    for site in sites.values():
        wait_until(lambda s=site: _messages(s, "job.deploy"), timeout=10)
        _send(site, job_id, "job.status", {"status": "deployed"})
    return job_id


def inbox(site: FakeSite, count: int = 1) -> list[tuple[dict[str, Any], Any]]:
    """The first ``count`` driver messages ``site`` got: (body, envelope)."""
    wait_until(lambda: len(_messages(site, "driver.message")) >= count, timeout=15)
    return [(json.loads(e.body_json), e) for e in _messages(site, "driver.message")[:count]]


def reply_body(body: dict[str, Any], content: RecordSet, npz: bytes | None = None) -> dict:
    """A site's ``driver.reply`` body answering ``body``'s message with ``content``."""
    asked = from_wire(body["message"], _inline(body) if npz is None else npz, where="test")
    data, arrays = to_wire(asked.create_reply(content))
    raw = npz_of(arrays)
    out = {"reply_to": asked.metadata.message_id, "message": data}
    if raw is not None:
        out["npz_b64"] = base64.b64encode(raw).decode()
    return out


def _inline(body: dict[str, Any]) -> bytes | None:
    return base64.b64decode(body["npz_b64"]) if body.get("npz_b64") else None


def rows(session, job_id: str, event: str | None = None) -> list:
    return session.get_job_messages(job_id, event=event)


def content(value: float) -> RecordSet:
    return RecordSet({"m": MetricsRecord({"value": value})})


def test_a_reply_reaches_the_waiting_driver_and_both_are_logged(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    assert set(driver.node_names.values()) == {"site-1", "site-2"}
    assert sorted(driver.get_node_ids()) == sorted(node_id(s) for s in sites)
    payload = RecordSet({"c": ConfigsRecord({"lr": 0.1}), "p": ParametersRecord({"w": np.ones(3)})})
    messages = [
        driver.create_message(payload, MessageType.TRAIN, node, group_id="1")
        for node in driver.get_node_ids()
    ]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(driver.send_and_receive, messages, timeout=30)
        for name, site in sites.items():
            ((body, _),) = inbox(site)
            got = from_wire(body["message"], _inline(body), where="test")
            assert got.metadata.dst_node_id == node_id(name)
            assert got.content == payload
            _send(site, job_id, "driver.reply", reply_body(body, content(len(name))))
        replies = waiting.result(30)
    assert {r.metadata.src_node_id for r in replies} == {node_id(s) for s in sites}
    assert {r.metadata.reply_to_message_id for r in replies} == {
        m.metadata.message_id for m in messages
    }
    assert all(r.content["m"]["value"] == 6 for r in replies)
    log = rows(session, job_id)
    assert [r.event for r in log].count("sent") == 2 and [r.event for r in log].count("reply") == 2
    sent = next(r for r in log if r.event == "sent")
    assert (sent.message_type, sent.group_id, sent.src) == ("train", "1", f"driver {ADMIN}")
    assert all(r.latency is not None and r.latency >= 0 for r in log if r.event == "reply")
    assert driver.pull_messages([m.metadata.message_id for m in messages]) == []  # each once


def test_a_reply_from_another_site_and_a_second_reply_are_refused_and_logged(
    session, sites, tmp_path
):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    msg = driver.create_message(content(1), "query", node_id("site-1"))
    (message_id,) = driver.push_messages([msg])
    assert msg.metadata.message_id == message_id
    ((body, _),) = inbox(sites["site-1"])
    _send(sites["site-2"], job_id, "driver.reply", reply_body(body, content(2)))
    wait_until(lambda: rows(session, job_id, "refused"), timeout=10)
    _send(sites["site-1"], job_id, "driver.reply", reply_body(body, content(1)))
    _send(sites["site-1"], job_id, "driver.reply", reply_body(body, content(3)))
    wait_until(lambda: len(rows(session, job_id, "refused")) == 2, timeout=10)
    refused = rows(session, job_id, "refused")
    assert refused[0].src == "site-2" and "went to site-1" in refused[0].reason
    assert refused[1].src == "site-1" and "second reply" in refused[1].reason
    (reply,) = driver.pull_messages([message_id])
    assert reply.content["m"]["value"] == 1 and reply.metadata.src_node_id == node_id("site-1")


def test_a_silent_site_yields_an_error_reply_when_the_ttl_ends(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    msg = driver.create_message(content(1), "train", node_id("site-2"), ttl=0.5)
    started = time.monotonic()
    (reply,) = driver.send_and_receive([msg], timeout=30)
    assert time.monotonic() - started < 20
    assert reply.has_error() and reply.error.code == ErrorCode.TTL_EXPIRED
    assert "site-2 did not reply within the message's ttl of 0.5 s" in reply.error.reason
    ((body, _),) = inbox(sites["site-2"])
    assert body["ttl_left"] == pytest.approx(0.5, abs=0.1)
    _send(sites["site-2"], job_id, "driver.reply", reply_body(body, content(1)))
    wait_until(lambda: rows(session, job_id, "refused"), timeout=10)
    assert "after the message's TTL ended" in rows(session, job_id, "refused")[0].reason
    (error_row,) = rows(session, job_id, "reply")
    assert error_row.src == "server" and error_row.error.startswith(f"{ErrorCode.TTL_EXPIRED}: ")


def test_big_arrays_travel_as_transfers_both_ways(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    big = np.arange(300_000, dtype=np.float64)  # 2.4 MB: more than travels inline
    msg = driver.create_message(
        RecordSet({"p": ParametersRecord({"x": big})}), "train", node_id("site-1")
    )
    site = sites["site-1"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(driver.send_and_receive, [msg], timeout=30)
        ((body, envelope),) = inbox(site)
        assert "npz_b64" not in body and len(envelope.blobs) == 1
        ref = envelope.blobs[0]
        npz = b"".join(
            part.data
            for part in site.stub.Download(_blob_request(ref.blob_id, job_id), timeout=10)
            if part.WhichOneof("item") == "data"
        )
        asked = from_wire(body["message"], npz, where="test")
        np.testing.assert_array_equal(asked.content["p"]["x"], big)
        answer = RecordSet({"p": ParametersRecord({"x": big * 2})})
        data, arrays = to_wire(asked.create_reply(answer))
        raw = npz_of(arrays)
        uploaded = _upload(site, raw, job_id=job_id, task_id=asked.metadata.message_id)
        _send(
            site,
            job_id,
            "driver.reply",
            {"reply_to": asked.metadata.message_id, "message": data},
            blobs=[uploaded],
        )
        (reply,) = waiting.result(30)
    np.testing.assert_array_equal(reply.content["p"]["x"], big * 2)
    with pytest.raises(grpc.RpcError, match="awaits no reply from site-2"):
        _upload(sites["site-2"], raw, job_id=job_id, task_id=asked.metadata.message_id)


def _blob_request(blob_id: str, job_id: str):
    from flare_protocol._generated import site_pb2

    return site_pb2.BlobRequest(blob_id=blob_id, job_id=job_id)


def _upload(site, data: bytes, **params: str):
    from flare_protocol._generated import common_pb2

    def chunks():
        yield common_pb2.TransferChunk(
            header=common_pb2.TransferHeader(
                name="reply.npz",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                params={"kind": "reply", **params},
            )
        )
        for i in range(0, len(data), CHUNK_SIZE):
            yield common_pb2.TransferChunk(data=data[i : i + CHUNK_SIZE])

    return site.stub.Upload(chunks(), timeout=10)


def test_a_malformed_reply_becomes_an_error_reply(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    msg = driver.create_message(content(1), "train", node_id("site-1"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(driver.send_and_receive, [msg], timeout=30)
        ((body, _),) = inbox(sites["site-1"])
        bad = reply_body(body, RecordSet({"p": ParametersRecord({"x": np.ones(2)})}))
        bad["message"]["content"]["records"][0]["arrays"].append("missing")
        _send(sites["site-1"], job_id, "driver.reply", bad)
        (reply,) = waiting.result(30)
    assert reply.has_error() and reply.error.code == ErrorCode.REFUSED
    assert "is not in the content's .npz" in reply.error.reason


def test_a_site_whose_user_code_failed_answers_its_messages_with_errors(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    msg = driver.create_message(content(1), "train", node_id("site-2"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(driver.send_and_receive, [msg], timeout=30)
        inbox(sites["site-2"])
        report = {"status": "failed", "error": "exited with code 1", "stderr_tail": "Boom"}
        _send(sites["site-2"], job_id, "job.status", report)
        (reply,) = waiting.result(30)
    assert reply.error.code == ErrorCode.CLIENT_APP_CRASHED and "Boom" in reply.error.reason
    assert driver.get_node_ids() == [node_id("site-1")]


def test_finish_ends_the_job_with_its_final_model(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    model = {"w": np.arange(4, dtype=np.float32), "b": np.float32(0.5)}
    meta = driver.finish(model=ParametersRecord(model))
    assert meta.status == "FINISHED:COMPLETED"
    got = load_params(session.download_model(job_id, tmp_path / "m.npz"))
    assert got.keys() == model.keys() and got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], model["w"])
    summary = session.get_job_summary(job_id)
    assert summary["workflow"] == "driver" and summary["driver"]["messages_sent"] == 0
    with pytest.raises(JobNotRunning):
        driver.push_messages([driver.create_message(content(1), "train", node_id("site-1"))])


def test_finish_refuses_a_model_with_nan_naming_the_array(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    with pytest.raises(InvalidArgumentError, match="'w' contains NaN"):
        driver.finish(model={"w": np.array([np.nan])})
    with pytest.raises(InvalidArgumentError, match="COMPLETED, FAILED, ABORTED"):
        driver.finish("DONE")
    assert driver.finish("FAILED", reason="the driver gave up").status == (
        "FINISHED:EXECUTION_EXCEPTION"
    )
    assert session.get_job_summary(job_id)["reason"] == "the driver gave up"


def test_a_driver_away_longer_than_the_idle_timeout_ends_the_job(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path, driver_idle_timeout=1.5))
    driver = session.get_driver(job_id, timeout=20)
    msg = driver.create_message(content(1), "train", node_id("site-1"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(driver.send_and_receive, [msg], timeout=30)
        ((body, _),) = inbox(sites["site-1"])
        time.sleep(2.5)  # longer than the idle timeout, with a reply stream open
        assert not session.get_job_meta(job_id).finished
        _send(sites["site-1"], job_id, "driver.reply", reply_body(body, content(1)))
        assert waiting.result(30)[0].has_content()
    meta = session.wait_for_job(job_id, timeout=30)  # now nobody calls
    assert meta.status == "FINISHED:ABNORMAL"
    assert "driver_idle_timeout" in meta["status_history"][-1]["reason"]


def test_the_driver_api_refuses_a_job_of_a_built_in_workflow(session, sites, tmp_path):
    job_id = session.submit_job(driver_job(tmp_path, workflow="fedavg"))
    with pytest.raises(InvalidArgumentError, match="runs the fedavg workflow, not a driver"):
        session.get_driver(job_id, timeout=20)


def test_only_the_submitter_or_a_manager_may_drive_a_job(server, session, sites, kits, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    for name in ("member@org_b.com", "lead@org_b.com", "lead@org_a.com"):
        with new_secure_session(name, kits[name], server_address=server.admin_address) as other:
            with pytest.raises(AuthorizationError, match=f"{name} .* may not drive job"):
                other.get_driver(job_id, timeout=5)
    with new_secure_session(
        "lead@org_a.com", kits["lead@org_a.com"], server_address=server.admin_address
    ) as lead:
        own = lead.submit_job(driver_job(tmp_path / "lead"))
        assert own != job_id  # a lead drives its own job (it is the submitter)
    assert session.get_driver(job_id, timeout=5).job_id == job_id  # the project admin


def test_unknown_nodes_and_ids_are_refused_naming_the_fix(session, sites, tmp_path):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    with pytest.raises(InvalidArgumentError, match="does not run job .*get_node_ids"):
        driver.create_message(content(1), "train", 12345)
    with pytest.raises(InvalidArgumentError, match="no message of job .* has the id"):
        driver.pull_messages(["0" * 32])


def test_the_async_driver_does_the_same(server, sites, kits, tmp_path):
    from flare_admin import AsyncSession

    sync = new_secure_session(ADMIN, kits[ADMIN], server_address=server.admin_address)
    with sync:
        job_id = deploy(sync, sites, driver_job(tmp_path))

    async def drive() -> list:
        async with await AsyncSession.open(
            ADMIN, kits[ADMIN], server_address=server.admin_address
        ) as s:
            driver = await s.get_driver(job_id, timeout=20)
            nodes = await driver.get_node_ids()
            msgs = [driver.create_message(content(n % 7), "query", n) for n in nodes]
            task = asyncio.ensure_future(driver.send_and_receive(msgs, timeout=30))
            for site in sites.values():
                ((body, _),) = await asyncio.to_thread(inbox, site)
                value = from_wire(body["message"], None, where="t").content["m"]["value"]
                _send(site, job_id, "driver.reply", reply_body(body, content(value)))
            replies = await task
            await driver.finish()
            return replies

    replies = asyncio.run(drive())
    assert {r.metadata.src_node_id % 7 for r in replies} == {
        int(r.content["m"]["value"]) for r in replies
    }


def test_a_site_that_comes_back_gets_its_unanswered_message_again(
    server, session, sites, kits, tmp_path
):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    msg = driver.create_message(content(1), "query", node_id("site-1"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(driver.send_and_receive, [msg], timeout=30)
        inbox(sites["site-1"])
        sites["site-1"].close()  # the connection breaks before the site replied
        back = FakeSite(kits["site-1"], server.site_address).open(running_jobs=(job_id,))
        try:  # back within reconnect_grace, still running the job
            ((body, _),) = inbox(back)  # the same message, sent again
            assert body["message"]["message_id"] == msg.metadata.message_id
            _send(back, job_id, "driver.reply", reply_body(body, content(9)))
            (reply,) = waiting.result(30)
        finally:
            back.close()
    assert reply.content["m"]["value"] == 9


def test_a_site_that_does_not_come_back_is_gone_and_the_last_one_ends_the_job(
    session, sites, tmp_path
):
    job_id = deploy(session, sites, driver_job(tmp_path))
    driver = session.get_driver(job_id, timeout=20)
    msg = driver.create_message(content(1), "query", node_id("site-2"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(driver.send_and_receive, [msg], timeout=30)
        inbox(sites["site-2"])
        sites["site-2"].close()  # and it stays away longer than reconnect_grace
        (reply,) = waiting.result(30)
    assert reply.error.code == ErrorCode.NODE_UNAVAILABLE
    assert "site-2: the site is gone" in reply.error.reason
    assert driver.get_node_ids() == [node_id("site-1")]
    report = {"status": "failed", "error": "exited with code 1"}
    _send(sites["site-1"], job_id, "job.status", report)
    meta = session.wait_for_job(job_id, timeout=30)
    assert meta.status == "FINISHED:EXECUTION_EXCEPTION"
    assert "every site of the job is gone" in meta["status_history"][-1]["reason"]
