"""Fixtures for Session tests: a real server on 127.0.0.1 port 0 and the provisioned kits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flare_admin import Session, new_secure_session
from flare_server.jobs import JobStatus
from tests.server_harness import ServerThread

ADMIN = "admin@org_a.com"

SERVER_CONFIG = {"workflow": "fedavg", "num_rounds": 1}
CLIENT_CONFIG = {"executor": "script", "script": "custom/train.py"}


@pytest.fixture
def kits(provisioned: Any) -> dict[str, Path]:
    return {name: Path(path) for name, path in provisioned.kits.items()}


@pytest.fixture
def admin_kit(provisioned: Any, tmp_path: Path) -> Path:
    """A private copy of the project admin's kit (downloads land in its transfer/)."""
    from tests import kit_factory

    return kit_factory.copy_kit(provisioned, ADMIN, tmp_path / "kits")


@pytest.fixture
def server(provisioned: Any, tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(Path(provisioned.kits["localhost"]), tmp_path / "server-ws") as srv:
        yield srv


@pytest.fixture
def open_session(server: ServerThread, kits: dict[str, Path]) -> Iterator[Callable[..., Session]]:
    """``open_session(name=ADMIN, kit=None, **kw)``: a Session closed after the test."""
    opened: list[Session] = []

    def factory(name: str = ADMIN, kit: Path | None = None, **kw: Any) -> Session:
        kw.setdefault("server_address", server.admin_address)
        session = new_secure_session(name, kit or kits[name], **kw)
        opened.append(session)
        return session

    yield factory
    for session in opened:
        session.close()


@pytest.fixture
def session(open_session: Callable[..., Session], admin_kit: Path) -> Session:
    return open_session(ADMIN, admin_kit)


def make_job(folder: Path, name: str = "hello", **meta: Any) -> Path:
    """A minimal valid job folder (one app deployed to @ALL)."""
    meta_doc = {"name": name, "min_clients": 1, "deploy_map": {"app": ["@ALL"]}, **meta}
    (folder / "app" / "config").mkdir(parents=True)
    (folder / "app" / "custom").mkdir()
    (folder / "meta.json").write_text(json.dumps(meta_doc))
    (folder / "app" / "config" / "config_fed_server.json").write_text(json.dumps(SERVER_CONFIG))
    (folder / "app" / "config" / "config_fed_client.json").write_text(json.dumps(CLIENT_CONFIG))
    (folder / "app" / "custom" / "train.py").write_text("print('training')\n")
    return folder


@pytest.fixture
def job_folder(tmp_path: Path) -> Path:
    return make_job(tmp_path / "hello")


def drain(sink: Any, messages: Iterable[Any]) -> str:
    """Feed a download sink every message as a Session does, then finish it (discarding
    what arrived when a message is refused)."""
    try:
        for message in messages:
            sink.feed(message)
    except BaseException:
        sink.discard()
        raise
    return str(sink.finish())


def advance(server: ServerThread, job_id: str, *statuses: JobStatus, pause: float = 0.0) -> None:
    """Move a job through ``statuses`` in the server's store (as the scheduler would)."""
    for status in statuses:
        if pause:
            time.sleep(pause)
        server.call(lambda s=status: server.server.store.set_status(job_id, s))


def finish_with_result(server: ServerThread, job_id: str, files: dict[str, bytes]) -> None:
    """Write a result folder for the job and finish it FINISHED:COMPLETED."""
    result = Path(server.server.store.result_dir(job_id))
    for rel, data in files.items():
        path = result / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    advance(server, job_id, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.FINISHED_COMPLETED)
