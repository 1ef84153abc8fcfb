"""The site runtime at its boundary: messages pushed by the real server, answers it receives.

The site runs in-process (``SiteRuntime.run()`` on the test's event loop) against the real
server in a thread. Most tests push job messages themselves (``registry.send``/
``registry.request``) and record what the site sends back as one more listener of the
server's site messages (``SiteRegistry.subscribe_messages``); blobs go through the server's
own Download/Upload (its ``BlobRegistry``, with an upload policy for each pushed job). The
last tests submit real jobs, so that what a site reports reaches the real job runner.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flare_admin import new_secure_session
from flare_protocol._generated import site_pb2
from flare_protocol.kit import load_kit
from flare_protocol.models import dump_params, load_params, save_params
from flare_protocol.site_topics import SiteCommand
from flare_server.blobs import UploadedBlob
from flare_site.runtime import SiteRuntime, load_site_settings
from tests.flare_site.runtime_helpers import app_zip, site_kit
from tests.flare_site.site_helpers import wait_gone
from tests.server_harness import ServerThread

ADMIN = "admin@org_a.com"
SCRIPT_CONFIG = {"executor": "script", "script": "custom/train.py"}
TRAINER = """
import os, sys, time
import numpy as np
import flare_site.client as flare

flare.init()
print("hello from the trainer", flush=True)
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    if os.environ.get("MODE") == "crash":
        print("cannot open data.csv", file=sys.stderr, flush=True)
        sys.exit(3)
    if os.environ.get("MODE") == "hang":
        time.sleep(600)
    if os.environ.get("MODE") == "slow":
        time.sleep(1.0)
    time.sleep(float(os.environ.get("SLEEP", "0")))
    flare.log_metric("loss", 0.5, step=1)
    flare.send(flare.FLModel(params={"w": model.params["w"] * 10}, meta={"num_examples": 4}))
    if os.environ.get("MODE") == "die-after-send":
        print("out of memory while saving", file=sys.stderr, flush=True)
        sys.exit(4)
"""


# -- the real server, with what sites send recorded -----------------------------------


class Received:
    def __init__(self) -> None:
        self.items: list[tuple[str, site_pb2.Envelope]] = []
        self.lock = threading.Lock()

    def __call__(self, site: str, envelope: site_pb2.Envelope) -> None:
        with self.lock:
            copy = site_pb2.Envelope()
            copy.CopyFrom(envelope)
            self.items.append((site, copy))

    def topic(self, topic: str, job_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            items = list(self.items)
        return [
            {**json.loads(e.body_json or "{}"), "_blobs": list(e.blobs), "_site": s}
            for s, e in items
            if e.topic == topic and (job_id is None or e.job_id == job_id)
        ]


class JobsPushedByTheTests:
    """The server's JobLauncher here: these tests push job messages themselves, so the
    server's job runner must not abort them as jobs it does not run."""

    async def launch(self, job_id: str, meta: Any, sites: tuple[str, ...]) -> None:
        raise AssertionError("no job is submitted to the server in these tests")

    def free_slots(self) -> dict[str, int]:
        return {}


@pytest.fixture
def server(provisioned: Any, tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(
        Path(provisioned.kits["localhost"]),
        tmp_path / "server-ws",
        launcher=JobsPushedByTheTests(),
        heartbeat_interval=0.2,
        heartbeat_timeout=2.0,
        site_command_timeout=5.0,
    ) as srv:
        yield srv


class ServerBlobs:
    """The server's own blobs for the jobs these tests push: what they serve is registered
    with the server's BlobRegistry, and each pushed job accepts uploads (this is its
    UploadPolicy), kept for the tests to read."""

    def __init__(self, server: ServerThread, folder: Path) -> None:
        self.server = server
        self.folder = folder
        self.uploads: dict[str, UploadedBlob] = {}

    def put(self, job_id: str, data: bytes, *, sha256: str | None = None) -> Any:
        """Serve ``data`` to site-1 for ``job_id`` (announced with ``sha256``, if given)."""
        digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
        registry = self.server.server.runner.blobs
        return self.server.call(
            lambda: registry.serve(
                job_id,
                Path(),
                ["site-1"],
                name="blob",
                sha256=digest,
                size=len(data),
                content_type="application/octet-stream",
                data=data,
            ).ref()
        )

    def accept_uploads(self, job_id: str) -> None:
        registry = self.server.server.runner.blobs
        self.server.call(lambda: registry.allow_uploads(job_id, self))

    def content(self, blob_id: str) -> bytes:
        blob = self.uploads[blob_id]
        return bytes(blob.data) if blob.data is not None else blob.path.read_bytes()

    # UploadPolicy
    def upload_target(self, site: str, kind: str, task_id: str) -> tuple[Path, int]:
        return self.folder, 1 << 30

    def on_uploaded(self, blob: UploadedBlob) -> None:
        self.uploads[blob.blob_id] = blob


@pytest.fixture
def blobs(server: ServerThread, tmp_path: Path) -> ServerBlobs:
    folder = tmp_path / "uploads"
    folder.mkdir()
    return ServerBlobs(server, folder)


@pytest.fixture
def received(server: ServerThread) -> Received:
    recorder = Received()
    server.call(lambda: server.server.registry.subscribe_messages(recorder))
    return recorder


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def in_registry(server: ServerThread, name: str = "site-1") -> Any:
    return await asyncio.to_thread(server.call, lambda: server.server.registry.get(name))


class Site:
    """An in-process site runtime on the test's loop."""

    def __init__(self, runtime: SiteRuntime) -> None:
        self.runtime = runtime
        self.task = asyncio.ensure_future(runtime.run())

    async def stop(self) -> str:
        self.runtime.request_stop()
        return await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def start_site(
    provisioned: Any, tmp_path: Path, server: ServerThread
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Site] = []

    async def start(address: str | None = None, **settings: Any) -> Site:
        kit_dir = site_kit(provisioned, tmp_path / f"kits{len(started)}")
        kit = load_kit(kit_dir)
        config = load_site_settings(kit, server=address or server.site_address).replace(
            max_jobs=2, **settings
        )
        site = Site(SiteRuntime(kit, config))
        started.append(site)
        await until(lambda: site.runtime.connected)
        return site

    yield start
    for site in started:
        if not site.task.done():
            await site.stop()


def push(server: ServerThread, topic: str, job_id: str, body: dict[str, Any], *refs: Any) -> None:
    envelope = site_pb2.Envelope(
        message_id=uuid.uuid4().hex,
        job_id=job_id,
        topic=topic,
        body_json=json.dumps(body),
        blobs=list(refs),
    )
    server.call(lambda: server.server.registry.send("site-1", envelope))


async def apush(server: ServerThread, *args: Any) -> None:
    await asyncio.to_thread(push, server, *args)


async def command(server: ServerThread, name: str, **args: Any) -> dict[str, Any]:
    request = server.server.registry.request("site-1", SiteCommand(name, args), timeout=5)
    reply = await asyncio.to_thread(server.call, request)
    return reply.to_dict()  # type: ignore[no-any-return]


def app_blob(blobs: ServerBlobs, job_id: str, **env: str) -> Any:
    config = {**SCRIPT_CONFIG, "env": env}
    return blobs.put(
        job_id,
        app_zip({"config/config_fed_client.json": json.dumps(config), "custom/train.py": TRAINER}),
    )


async def deploy(server: ServerThread, blobs: ServerBlobs, received: Received, **env: str) -> str:
    job_id = str(uuid.uuid4())
    blobs.accept_uploads(job_id)
    body = {"app": "app", "client_config": {**SCRIPT_CONFIG, "env": env}, "total_rounds": 1}
    await apush(server, "job.deploy", job_id, body, app_blob(blobs, job_id, **env))
    statuses = await until(lambda: received.topic("job.status", job_id))
    assert statuses[0]["status"] == "deployed", statuses
    return job_id


# -- the tests ---------------------------------------------------------------------------


async def test_a_job_deploys_trains_and_ends_over_the_channel(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    site = await start_site()
    job_id = await deploy(server, blobs, received)
    await until(lambda: site.runtime.jobs.running() == [job_id])

    model = blobs.put(job_id, dump_params({"w": np.arange(3.0)}))
    train = {"task_id": "r1-train", "round": 1, "total_rounds": 1, "params_type_expected": "FULL"}
    await apush(server, "task.train", job_id, train, model)
    (result,) = await until(lambda: received.topic("task.result", job_id))
    assert result["kind"] == "train" and result["error"] is None
    assert result["num_examples"] == 4 and result["params_type"] == "FULL"
    (ref,) = result["_blobs"]
    update = load_params(blobs.content(ref.blob_id))
    np.testing.assert_array_equal(update["w"], np.arange(3.0) * 10)
    uploaded = blobs.uploads[ref.blob_id]
    assert (uploaded.job_id, uploaded.task_id, uploaded.kind) == (job_id, "r1-train", "update")
    (metric,) = await until(lambda: received.topic("metrics", job_id))
    assert (metric["key"], metric["value"], metric["step"]) == ("loss", 0.5, 1)
    # The round's model and update are gone once the task is answered (no disk growth
    # over a long job).
    record = site.runtime.jobs.get(job_id)
    assert not [p for p in record.downloads.iterdir() if p.suffix == ".npz"]
    assert not list((record.folder / "models").glob("r1-train*"))

    await apush(server, "job.end", job_id, {"status": "FINISHED:COMPLETED"})
    (log_msg,) = await until(lambda: received.topic("job.log", job_id))
    (log_ref,) = log_msg["_blobs"]
    text = blobs.content(log_ref.blob_id).decode()
    assert "[stdout] hello from the trainer" in text
    assert site.runtime.jobs.running() == []
    await until(lambda: site.runtime.jobs.get(job_id).state == "finished")


async def test_heartbeats_carry_the_running_jobs(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    await start_site()
    job_id = await deploy(server, blobs, received)
    await until(
        lambda: server.call(
            lambda: getattr(server.server.registry.get("site-1"), "running_jobs", ())
        )
    )
    assert (await in_registry(server)).running_jobs == (job_id,)


async def test_an_abort_pushed_by_the_server_kills_the_job_and_is_confirmed(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    site = await start_site()
    job_id = await deploy(server, blobs, received, MODE="hang")
    await apush(
        server,
        "task.train",
        job_id,
        {"task_id": "t1", "round": 1, "total_rounds": 1},
        blobs.put(job_id, dump_params({"w": np.zeros(2)})),
    )
    await asyncio.sleep(0.3)
    pids = site.runtime.jobs.get(job_id).executor.pids
    started = time.monotonic()
    await apush(server, "job.abort", job_id, {"reason": "aborted by an admin"})
    statuses = await until(
        lambda: [s for s in received.topic("job.status", job_id) if s["status"] == "aborted"]
    )
    assert time.monotonic() - started < 30  # a generous ceiling: not a benchmark
    assert statuses[0]["error"] == "aborted by an admin"
    assert await asyncio.to_thread(wait_gone, pids, 3.0) == []
    assert site.runtime.jobs.running() == []


async def test_a_crashing_script_reports_failed_with_its_stderr_tail(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    site = await start_site()
    job_id = await deploy(server, blobs, received, MODE="crash")
    model = blobs.put(job_id, dump_params({"w": np.zeros(2)}))
    await apush(server, "task.train", job_id, {"task_id": "t1", "round": 1}, model)
    failed = await until(
        lambda: [s for s in received.topic("job.status", job_id) if s["status"] == "failed"]
    )
    assert "exited with code 3" in failed[0]["error"]
    assert "cannot open data.csv" in failed[0]["stderr_tail"]
    (result,) = received.topic("task.result", job_id)
    assert result["kind"] == "train" and "exited with code 3" in result["error"]
    log_text = site.runtime.jobs.get(job_id).log_path.read_text()
    assert "[stderr] cannot open data.csv" in log_text


async def test_an_app_archive_damaged_in_transit_is_refused(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    site = await start_site()
    job_id = str(uuid.uuid4())
    ref = blobs.put(job_id, b"PK not really a zip", sha256="0" * 64)  # announced wrong
    await apush(server, "job.deploy", job_id, {"app": "app"}, ref)
    (status,) = await until(lambda: received.topic("job.status", job_id))
    assert status["status"] == "failed" and "SHA-256" in status["error"]
    assert not (site.runtime.workspace / "jobs" / job_id).exists()
    assert list((site.runtime.workspace / "tmp").iterdir()) == []


async def test_an_unsafe_app_archive_from_the_server_is_refused(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    await start_site()
    job_id = str(uuid.uuid4())
    ref = blobs.put(job_id, app_zip({"config/config_fed_client.json": "{}", "../../evil.py": "x"}))
    await apush(server, "job.deploy", job_id, {"app": "app"}, ref)
    (status,) = await until(lambda: received.topic("job.status", job_id))
    assert status["status"] == "failed" and "'..'" in status["error"]


async def test_reset_errors_forgets_one_jobs_errors_on_the_site(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    await start_site()
    job_id = str(uuid.uuid4())
    ref = blobs.put(job_id, app_zip({"config/config_fed_client.json": "{}", "../evil.py": "x"}))
    await apush(server, "job.deploy", job_id, {"app": "app"}, ref)
    await until(lambda: received.topic("job.status", job_id))
    (error,) = (await command(server, "show_errors", job_id=job_id))["result"]
    assert error["job_id"] == job_id and "'..'" in error["error"]
    assert (await command(server, "reset_errors", job_id=job_id))["result"] == {"reset": 1}
    assert (await command(server, "show_errors", job_id=job_id))["result"] == []
    missing = await command(server, "reset_errors")
    assert "needs a job_id" in missing["error"]["message"]


async def test_site_commands_answer_within_the_workspace_only(
    server: ServerThread, received: Received, start_site: Any
) -> None:
    site = await start_site()
    (site.runtime.workspace / "notes.txt").write_text("alpha\nbeta\ngamma\n")
    listing = await command(server, "ls", path=".")
    assert "notes.txt" in listing["result"]["text"] and "jobs/" in listing["result"]["text"]
    assert (await command(server, "tail", path="notes.txt", lines=1))["result"]["text"] == (
        "gamma\n"
    )
    assert (await command(server, "grep", path="notes.txt", pattern="bet"))["result"][
        "text"
    ] == "2:beta\n"
    assert (await command(server, "pwd"))["result"]["text"] == str(site.runtime.workspace)
    for bad in ("../startup/client.key", "/etc/passwd", "logs\\site.log"):
        reply = await command(server, "cat", path=bad)
        assert reply["error"]["type"] == "InvalidArgumentError", bad
    (site.runtime.workspace / "out").symlink_to(site.runtime.kit.root / "startup")
    reply = await command(server, "ls", path="out")
    assert "outside the site workspace" in reply["error"]["message"]
    stats = await command(server, "show_stats")
    assert stats["result"]["site"] == "site-1" and stats["result"]["max_jobs"] == 2
    unknown = await command(server, "rm", path="notes.txt")
    assert "unknown site command 'rm'" in unknown["error"]["message"]


async def test_the_admin_session_reads_the_site_log_through_the_server(
    server: ServerThread, start_site: Any, provisioned: Any, tmp_path: Path
) -> None:
    site = await start_site()
    log = site.runtime.workspace / "logs" / "site.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("one\ntwo\nthree\n")

    def admin() -> tuple[str, str]:
        with new_secure_session(
            ADMIN, provisioned.kits[ADMIN], server_address=server.admin_address
        ) as session:
            return session.tail_target_log("site-1", "-n 2"), session.ls_target("site-1")

    tail, listing = await asyncio.to_thread(admin)
    assert tail == "two\nthree\n"
    assert "logs/" in listing


@pytest.mark.parametrize(("name", "outcome"), [("shutdown", "stop"), ("restart", "restart")])
async def test_shutdown_and_restart_commands_reply_then_end_the_runtime(
    server: ServerThread, start_site: Any, name: str, outcome: str
) -> None:
    site = await start_site()
    reply = await command(server, name)
    assert reply["result"] in ("stopping", "restarting") and reply["error"] is None
    assert await asyncio.wait_for(site.task, 10) == outcome


async def test_unknown_topics_are_ignored_and_the_site_stays_connected(
    server: ServerThread, received: Received, start_site: Any
) -> None:
    site = await start_site()
    await apush(server, "os.system", "", {"cmd": "rm -rf /"})
    await apush(server, "job.deploy", str(uuid.uuid4()), {})  # no archive: failed, not a crash
    await until(lambda: received.topic("job.status"))
    assert received.topic("job.status")[0]["status"] == "failed"
    assert site.runtime.connected and not site.task.done()


async def test_a_malformed_server_message_is_answered_where_the_server_waits(
    server: ServerThread, received: Received, start_site: Any
) -> None:
    site = await start_site()
    job_id = str(uuid.uuid4())
    await apush(server, "job.deploy", job_id, {"app": "app", "client_config": "x"})
    (status,) = await until(lambda: received.topic("job.status", job_id))
    assert status["status"] == "failed"
    assert "job.deploy: 'client_config' must be a JSON object" in status["error"]
    await apush(server, "site.command", "", {"command": 5})
    (reply,) = await until(lambda: received.topic("site.reply"))
    assert reply["error"]["type"] == "InvalidArgumentError"
    assert "site.command: 'command' must be a string" in reply["error"]["message"]
    await apush(server, "task.train", job_id, {"round": 1})  # no task id: nothing to answer
    await apush(server, "job.end", job_id, {"status": "FINISHED:COMPLETED"})
    await until(lambda: received.topic("job.log", job_id))
    assert site.runtime.connected and not site.task.done()


async def test_after_a_server_restart_the_site_registers_again_with_its_running_jobs(
    provisioned: Any,
    tmp_path: Path,
    server: ServerThread,
    received: Received,
    blobs: ServerBlobs,
    start_site: Any,
) -> None:
    site = await start_site()
    job_id = await deploy(server, blobs, received)
    port = server.server.site_port
    await asyncio.to_thread(server.stop)
    await until(lambda: not site.runtime.connected)
    second = await asyncio.to_thread(
        lambda: ServerThread(
            Path(provisioned.kits["localhost"]),
            tmp_path / "server-ws2",
            heartbeat_interval=0.2,
            fed_learn_port=port,
        ).start()
    )
    try:
        registered = await until(
            lambda: second.call(lambda: second.server.registry.get("site-1")), timeout=10
        )
        assert registered.running_jobs == (job_id,)
        await until(lambda: site.runtime.connections == 2)
    finally:
        await asyncio.to_thread(second.stop)


# -- network faults ----------------------------------------------------------------------


class Proxy:
    """A TCP relay to the server that can go silent (packets dropped, sockets kept open)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = False
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if not self.silent:
                        dst.write(data)
                        await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_silent_network_is_detected_by_the_heartbeat_timeout_and_healed(
    server: ServerThread, start_site: Any
) -> None:
    proxy = await Proxy(server.server.site_port).start()
    try:
        site = await start_site(f"127.0.0.1:{proxy.port}")
        proxy.silent = True  # a cut cable: nothing arrives, nothing is closed
        started = time.monotonic()
        await until(lambda: not site.runtime.connected, timeout=10)
        detected = time.monotonic() - started
        proxy.silent = False
        await until(lambda: site.runtime.connected and site.runtime.connections == 2, timeout=10)
    finally:
        await proxy.close()
    assert detected < 8  # heartbeat_timeout (2 s) plus an interval; generous: not a benchmark
    assert await in_registry(server) is not None


async def test_stopping_the_site_aborts_its_jobs_and_tells_the_server(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    site = await start_site()
    job_id = await deploy(server, blobs, received)
    pids = site.runtime.jobs.get(job_id).executor.pids
    assert await site.stop() == "stop"
    assert await asyncio.to_thread(wait_gone, pids, 3.0) == []
    statuses = await until(
        lambda: [s for s in received.topic("job.status", job_id) if s["status"] == "aborted"]
    )
    assert statuses[0]["error"] == "the site stopped"


async def test_a_repeated_deployment_of_a_running_job_is_answered_not_redone(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    site = await start_site()
    job_id = await deploy(server, blobs, received)
    pids = site.runtime.jobs.get(job_id).executor.pids
    await apush(server, "job.deploy", job_id, {"app": "app"}, app_blob(blobs, job_id))
    statuses = await until(
        lambda: (
            len(received.topic("job.status", job_id)) == 2 and received.topic("job.status", job_id)
        )
    )
    assert [s["status"] for s in statuses] == ["deployed", "deployed"]
    assert site.runtime.jobs.get(job_id).executor.pids == pids


async def test_a_script_that_dies_between_tasks_is_reported_failed_at_once(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    site = await start_site()
    job_id = await deploy(server, blobs, received, MODE="die-after-send")
    model = blobs.put(job_id, dump_params({"w": np.zeros(2)}))
    await apush(server, "task.train", job_id, {"task_id": "t1", "round": 1}, model)
    failed = await until(
        lambda: [s for s in received.topic("job.status", job_id) if s["status"] == "failed"]
    )
    assert "between tasks" in failed[0]["error"] and "code 4" in failed[0]["error"]
    assert "out of memory while saving" in failed[0]["stderr_tail"]
    (result,) = received.topic("task.result", job_id)
    assert result["error"] is None  # the round itself succeeded
    assert site.runtime.jobs.running() == []


async def test_a_task_received_again_after_its_result_is_answered_with_that_result(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    await start_site()
    job_id = await deploy(server, blobs, received)
    model = blobs.put(job_id, dump_params({"w": np.arange(3.0)}))
    train = {"task_id": "r1-train", "round": 1, "total_rounds": 1}
    await apush(server, "task.train", job_id, train, model)
    (first,) = await until(lambda: received.topic("task.result", job_id))
    uploads = len(blobs.uploads)

    await apush(server, "task.train", job_id, train, model)
    results = await until(
        lambda: (
            len(received.topic("task.result", job_id)) == 2
            and received.topic("task.result", job_id)
        )
    )
    assert results[1] == results[0]  # the same body and the same update blob
    assert len(blobs.uploads) == uploads  # nothing trained or uploaded again
    assert len(received.topic("metrics", job_id)) == 1


async def test_a_task_received_again_while_it_runs_is_ignored(
    server: ServerThread, received: Received, blobs: ServerBlobs, start_site: Any
) -> None:
    await start_site()
    job_id = await deploy(server, blobs, received, MODE="slow")
    model = blobs.put(job_id, dump_params({"w": np.arange(3.0)}))
    train = {"task_id": "r1-train", "round": 1, "total_rounds": 1}
    await apush(server, "task.train", job_id, train, model)
    await apush(server, "task.train", job_id, train, model)
    (result,) = await until(lambda: received.topic("task.result", job_id))
    assert result["error"] is None
    await asyncio.sleep(1.5)  # a second run would have answered by now (it sleeps 1 s)
    assert len(received.topic("task.result", job_id)) == 1
    assert len(received.topic("metrics", job_id)) == 1


# -- what a site reports reaches the real job runner -------------------------------------


@pytest.fixture
def job_server(provisioned: Any, tmp_path: Path) -> Iterator[ServerThread]:
    """The real server with its own job runner. A lost site would get 60 s to come back,
    so whatever ends these jobs at once is what the site said, not its disconnect."""
    with ServerThread(
        Path(provisioned.kits["localhost"]),
        tmp_path / "job-server-ws",
        heartbeat_interval=0.2,
        heartbeat_timeout=30.0,
        reconnect_grace=60.0,
        log_wait=5.0,
    ) as srv:
        yield srv


@pytest.fixture
async def run_site(
    provisioned: Any, tmp_path: Path, job_server: ServerThread
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Site] = []

    async def start(name: str) -> Site:
        kit = load_kit(site_kit(provisioned, tmp_path / f"{name}-kit", name))
        config = load_site_settings(kit, server=job_server.site_address)
        site = Site(SiteRuntime(kit, config))
        started.append(site)
        await until(lambda: site.runtime.connected)
        return site

    yield start
    for site in started:
        if not site.task.done():
            await site.stop()


def job_folder(root: Path, rounds: int, sites: dict[str, dict[str, str]]) -> Path:
    """A job whose sites run TRAINER, each with its own env (one app per site)."""
    deploy_map = {f"app-{site}": [site] for site in sites}
    first = f"app-{next(iter(sites))}"
    deploy_map[first].append("server")
    (root / "meta.json").parent.mkdir(parents=True)
    (root / "meta.json").write_text(
        json.dumps({"name": "reports", "min_clients": len(sites), "deploy_map": deploy_map})
    )
    server_config = {
        "workflow": "fedavg",
        "num_rounds": rounds,
        "min_responses": len(sites),
        "round_timeout": 120,
        "initial_model": "initial.npz",
    }
    for site, env in sites.items():
        app = root / f"app-{site}"
        (app / "config").mkdir(parents=True)
        (app / "custom").mkdir()
        (app / "custom" / "train.py").write_text(TRAINER)
        client = {**SCRIPT_CONFIG, "env": env}
        (app / "config" / "config_fed_client.json").write_text(json.dumps(client))
        (app / "config" / "config_fed_server.json").write_text(json.dumps(server_config))
        save_params({"w": np.ones(3)}, app / "initial.npz")
    return root


def admin_session(provisioned: Any, server: ServerThread) -> Any:
    return new_secure_session(ADMIN, provisioned.kits[ADMIN], server_address=server.admin_address)


async def test_a_site_reporting_its_script_died_ends_the_job_at_once_with_its_stderr(
    provisioned: Any, tmp_path: Path, job_server: ServerThread, run_site: Any
) -> None:
    await run_site("site-1")
    await run_site("site-2")
    # site-1 answers round 1, then its script dies and the site reports job.status
    # "failed"; site-2 is still training round 1 (for 30 s): only that report can end
    # the job now, with site-1's stderr tail.
    job = job_folder(
        tmp_path / "job",
        rounds=2,
        sites={"site-1": {"MODE": "die-after-send"}, "site-2": {"SLEEP": "30"}},
    )

    def run() -> Any:
        with admin_session(provisioned, job_server) as session:
            job_id = session.submit_job(job)
            return session.wait_for_job(job_id, timeout=20)

    meta = await asyncio.to_thread(run)
    assert meta["status"] == "FINISHED:EXECUTION_EXCEPTION", meta["status_history"]
    reason = meta["status_history"][-1]["reason"]
    # Between tasks the job ends naming the user code; if the report overtook the
    # site's result, site-1's current task fails with it. Either way, with its stderr.
    assert "user code failed on site-1: " in reason or "failed on site-1: " in reason
    assert "code 4" in reason and "out of memory while saving" in reason
    (error,) = meta["errors"]
    assert error["sites"] == ["site-1"] and "out of memory while saving" in error["message"]


async def test_a_site_reporting_it_aborted_a_running_job_is_lost_to_it(
    provisioned: Any, tmp_path: Path, job_server: ServerThread, run_site: Any
) -> None:
    heard = Received()
    job_server.call(lambda: job_server.server.registry.subscribe_messages(heard))
    site = await run_site("site-1")
    await run_site("site-2")
    job = job_folder(tmp_path / "job", rounds=2, sites={"site-1": {}, "site-2": {"SLEEP": "2"}})
    with admin_session(provisioned, job_server) as session:
        job_id = await asyncio.to_thread(session.submit_job, job)
        # Once the server has site-1's round-1 result, site-1 stops: it aborts the job it
        # still runs (its script waits for round 2) and reports job.status "aborted"
        # before its channel closes. It would get 60 s to come back after a mere
        # disconnect; the report makes the runner count it lost at once, so round 2
        # cannot have its two responses.
        await until(
            lambda: [r for r in heard.topic("task.result", job_id) if r["_site"] == "site-1"], 30
        )
        assert await site.stop() == "stop"
        meta = await asyncio.to_thread(session.wait_for_job, job_id, 30)
    assert [s["status"] for s in heard.topic("job.status", job_id) if s["_site"] == "site-1"][
        -1
    ] == "aborted"
    assert meta["status"] == "FINISHED:ABNORMAL", meta["status_history"]
    reason = meta["status_history"][-1]["reason"]
    assert reason.startswith("after round 1: 1 site(s) left, 2 response(s) needed")
    assert "lost site-1 (the job was aborted on the site: the site stopped)" in reason
    assert meta["rounds_completed"] == 1
