"""Helpers for site-runtime tests: a site kit copy with fast settings, and a site process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from flare_protocol._generated import common_pb2, site_pb2_grpc
from flare_protocol.credentials import (
    CHUNK_SIZE,
    channel_credentials,
    channel_options,
    server_credentials,
)
from flare_protocol.kit import load_kit
from flare_site.executors.base import remove_stale_ipc_folders
from tests.kit_factory import copy_kit
from tests.server_harness import REPO

FAST_SETTINGS = {
    "log_level": "INFO",
    "heartbeat_interval_s": 0.2,
    "connect_timeout_s": 2.0,
    "reconnect_initial_s": 0.1,
    "reconnect_max_s": 0.5,
    "stop_grace_s": 2.0,
    # A site running as root must say as whom user code runs: the suite runs its own jobs,
    # as root where it runs as root (tests/e2e/test_user_code_isolation.py drops it).
    **({"run_user_code_as": "root"} if os.geteuid() == 0 else {}),
}


def site_kit(provisioned: Any, dest: Path, name: str = "site-1", **settings: Any) -> Path:
    """A copy of ``name``'s kit whose (unsigned) ``local/settings.json`` reconnects fast."""
    kit = copy_kit(provisioned, name, dest)
    (kit / "local" / "settings.json").write_text(json.dumps({**FAST_SETTINGS, **settings}))
    return kit


class SiteProcess:
    """``flare site start`` as a child process (stderr kept in a file)."""

    def __init__(self, kit: Path, server: str, *extra: str) -> None:
        self.kit = kit
        self.err_path = kit.parent / f"{kit.name}.{uuid.uuid4().hex[:8]}.stderr"
        self._err = open(self.err_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flare_cli.main",
                "site",
                "start",
                str(kit),
                "--server",
                server,
                *extra,
            ],
            stdout=self._err,
            stderr=self._err,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        # what the next start of this site would do: a killed site leaves its jobs' IPC
        # folders in the temporary directory (the suite must leave none behind)
        remove_stale_ipc_folders(self.kit / "workspace" / "jobs")
        self._err.close()

    def __enter__(self) -> SiteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def app_zip(files: dict[str, str | bytes]) -> bytes:
    """A zip of an app folder's content (relative path -> text or bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class FaultInjectingBlobService(site_pb2_grpc.SiteServicer):
    """Download/Upload as docs/site-protocol.md describes them, over real mutual TLS, with
    faults the real server never makes on purpose: for tests of the site's blob client.

    ``cut_after`` chunks, a download aborts with UNAVAILABLE (a broken stream);
    ``lie_size`` announces another size in the header; ``put(data, sha256=...)`` announces
    another digest. Tests of anything else use the server's own blobs.
    """

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.headers: dict[str, common_pb2.TransferHeader] = {}
        self.cut_after: int | None = None
        self.lie_size: int | None = None

    def put(self, data: bytes, *, sha256: str | None = None) -> common_pb2.BlobRef:
        blob_id = uuid.uuid4().hex
        self.blobs[blob_id] = data
        digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
        return common_pb2.BlobRef(blob_id=blob_id, name="b", size=len(data), sha256=digest)

    async def Download(self, request: Any, context: Any) -> AsyncIterator[Any]:
        data = self.blobs[request.blob_id]
        size = len(data) if self.lie_size is None else self.lie_size
        yield common_pb2.TransferChunk(header=common_pb2.TransferHeader(name="blob", size=size))
        for n, start in enumerate(range(0, len(data), CHUNK_SIZE)):
            if self.cut_after is not None and n >= self.cut_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection cut")
            yield common_pb2.TransferChunk(data=data[start : start + CHUNK_SIZE])

    async def Upload(self, request_iterator: Any, context: Any) -> common_pb2.BlobRef:
        header = None
        parts: list[bytes] = []
        async for chunk in request_iterator:
            if chunk.WhichOneof("item") == "header":
                header = chunk.header
            else:
                assert len(chunk.data) <= CHUNK_SIZE
                parts.append(chunk.data)
        data = b"".join(parts)
        assert header is not None and header.sha256 == hashlib.sha256(data).hexdigest()
        assert header.size == len(data)
        ref = self.put(data)
        self.headers[ref.blob_id] = header
        return ref


@contextlib.asynccontextmanager
async def fault_injecting_blob_server(
    provisioned: Any,
) -> AsyncIterator[tuple[FaultInjectingBlobService, Any]]:
    """A FaultInjectingBlobService with the server's kit on 127.0.0.1:0, and a site-1 stub
    dialling it."""
    service = FaultInjectingBlobService()
    server = grpc.aio.server()
    site_pb2_grpc.add_SiteServicer_to_server(service, server)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(load_kit(provisioned.kits["localhost"]))
    )
    await server.start()
    kit = load_kit(provisioned.kits["site-1"])
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.secure_channel(
        address, channel_credentials(kit), options=channel_options(kit, address)
    )
    try:
        yield service, site_pb2_grpc.SiteStub(channel)
    finally:
        await channel.close()
        await server.stop(None)
