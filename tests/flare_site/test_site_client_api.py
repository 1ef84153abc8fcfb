"""The Client API outside and inside a site, and the channel's guard."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

import flare_site.client as flare
from flare_protocol.errors import FlareError
from flare_site.client import _ipc
from flare_site.executors.base import IpcServer


def test_the_public_api_is_pinned() -> None:
    assert sorted(flare.__all__) == sorted(
        [
            # Driver API messages (docs/driver.md), with Flower's names
            "Array",
            "ArrayRecord",
            "ClientApp",
            "ConfigRecord",
            "ConfigsRecord",
            "Context",
            "Error",
            "ErrorCode",
            "Message",
            "MessageType",
            "Metadata",
            "MetricRecord",
            "MetricsRecord",
            "ParametersRecord",
            "RecordDict",
            "RecordSet",
            "receive_message",
            "send_reply",
            # the Client API
            "FLModel",
            "MLflowWriter",
            "ParamsType",
            "SummaryWriter",
            "WandBWriter",
            "get_job_id",
            "get_site_name",
            "init",
            "is_evaluate",
            "is_running",
            "is_train",
            "log_metric",
            "receive",
            "send",
            "shutdown",
        ]
    )


def test_init_outside_a_site_says_how_to_run_the_script() -> None:
    code = "import flare_site.client as flare\nflare.init()"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={}, timeout=30
    )
    assert proc.returncode == 1
    assert "not started by a flare site" in proc.stderr and "flare job run train" in proc.stderr


def test_calls_before_init_are_refused() -> None:
    with pytest.raises(FlareError, match=r"call flare.init\(\) first"):
        flare.log_metric("loss", 1.0)


async def test_a_connection_with_the_wrong_token_is_refused() -> None:
    seen: list[dict] = []

    async def handler(message: dict) -> dict:
        seen.append(message)
        return {"op": "ok"}

    server = IpcServer(handler)
    await server.start()
    try:

        def attempt() -> dict:
            channel = _ipc.BlockingChannel(server.path)
            channel.send({"op": "hello", "token": "guess", "pid": 1})
            reply = channel.recv()
            channel.close()
            return reply

        reply = await asyncio.to_thread(attempt)
        assert reply == {"op": "error", "message": "bad hello or token"}
        assert seen == [] and not server.connected.is_set()
    finally:
        await server.close()


async def test_an_oversized_frame_closes_the_connection() -> None:
    async def handler(message: dict) -> None:
        return None

    server = IpcServer(handler)
    await server.start()
    try:

        def attempt() -> bytes:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(server.path)
            sock.sendall((_ipc.MAX_FRAME + 1).to_bytes(4, "big"))
            data = sock.recv(10)
            sock.close()
            return data

        assert await asyncio.to_thread(attempt) == b""
    finally:
        await server.close()


async def test_closing_the_channel_under_a_connected_script_logs_nothing() -> None:
    """Issue 8 item 9: the site's loop reported the cancelled connection as an error
    ("Exception in callback ... CancelledError") when a job ended or the site stopped."""

    async def handler(message: dict) -> None:
        return None

    reported: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    server = IpcServer(handler)
    await server.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await asyncio.to_thread(sock.connect, server.path)
        hello = _ipc.encode_frame({"op": "hello", "token": server.token, "pid": 1})
        await asyncio.to_thread(sock.sendall, hello)
        await asyncio.wait_for(server.connected.wait(), 10)
        await server.close()  # the script is still connected, its handler waits for a frame
        for _ in range(10):
            await asyncio.sleep(0.01)
    finally:
        sock.close()
    assert reported == []
