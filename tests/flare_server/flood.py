"""Flood clients for the server's flood tests, run in their own process.

``python -m tests.flare_server.flood KIND --kit KIT --address HOST:PORT -n N --seconds S``
opens N hostile or greedy clients of one KIND against a running server, prints ``ready``
once they are all under way, keeps them going for S seconds, then prints one JSON line of
outcomes (counts by result) and exits. Its own process: the test process that measures a
legitimate admin's latency must not share a GIL with the flood.

Kinds:
  handshake        TCP connections that never finish (half of them send a partial TLS
                   record); one the server closes is opened again at once.
  metadata         calls carrying 64 KiB of metadata (over the server's cap), in a loop.
  stalled-upload   SubmitJob streams that send a header and 1 MiB, then nothing.
  slow-download    result downloads (``--job``) reading one message per 0.2 s.
  list-jobs        sessions (one connection each) calling ListJobs in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from flare_protocol._generated import admin_pb2, admin_pb2_grpc, common_pb2
from flare_protocol.credentials import channel_credentials, channel_options
from flare_protocol.kit import load_kit
from flare_protocol.result_format import FILES, METADATA_KEY
from flare_protocol.wire_errors import decode_detail

KINDS = ("handshake", "metadata", "stalled-upload", "slow-download", "list-jobs")


def outcome(exc: grpc.aio.AioRpcError) -> str:
    """``CODE`` or ``CODE/ErrorType/setting`` for a failed call."""
    detail = decode_detail(exc.trailing_metadata())
    if detail is None:
        return exc.code().name
    setting = detail.details.get("setting")
    return "/".join(x for x in (exc.code().name, detail.type, setting) if x)


def aio_stub(kit_dir: Path, address: str) -> tuple[admin_pb2_grpc.AdminStub, grpc.aio.Channel]:
    """An admin stub on its own connection (no subchannel shared with other channels)."""
    kit = load_kit(kit_dir)
    options = [*channel_options(kit, address), ("grpc.use_local_subchannel_pool", 1)]
    channel = grpc.aio.secure_channel(address, channel_credentials(kit), options=options)
    return admin_pb2_grpc.AdminStub(channel), channel


async def connected(n: int, kit: Path, address: str) -> list[Any]:
    """``n`` stubs, each on its own connection, each past its handshake (a Hello)."""
    pairs = [aio_stub(kit, address) for _ in range(n)]
    for i in range(0, n, 50):  # a few handshakes at a time
        batch = pairs[i : i + 50]
        await asyncio.gather(*(s.Hello(common_pb2.Empty(), timeout=60) for s, _ in batch))
    return pairs


async def handshake(args: argparse.Namespace, counts: collections.Counter[str]) -> None:
    host, port = args.address.rsplit(":", 1)

    def open_one(i: int) -> socket.socket:
        sock = socket.create_connection((host, int(port)))
        if i % 2:
            sock.sendall(b"\x16\x03\x01\x00\xff")  # a TLS record header, then nothing
        sock.setblocking(False)
        counts["opened"] += 1
        return sock

    socks = [open_one(i) for i in range(args.n)]
    ready()
    loop = asyncio.get_running_loop()
    end = loop.time() + args.seconds
    while loop.time() < end:
        for i, sock in enumerate(socks):
            try:
                if sock.recv(1) == b"":  # closed by the server: open another
                    counts["closed_by_server"] += 1
                    sock.close()
                    socks[i] = open_one(i)
            except BlockingIOError:
                pass
            except OSError:
                counts["reset_by_server"] += 1
                sock.close()
                socks[i] = open_one(i)
        await asyncio.sleep(0.05)
    for sock in socks:
        sock.close()


async def metadata(args: argparse.Namespace, counts: collections.Counter[str]) -> None:
    pairs = [aio_stub(args.kit, args.address) for _ in range(args.n)]
    pad = [("x-pad", "a" * 64 * 1024)]
    ready()
    end = time.monotonic() + args.seconds

    async def run(stub: admin_pb2_grpc.AdminStub) -> None:
        while time.monotonic() < end:
            try:
                await stub.Hello(common_pb2.Empty(), metadata=pad, timeout=10)
                counts["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                counts[outcome(exc)] += 1

    await asyncio.gather(*(run(s) for s, _ in pairs))
    await asyncio.gather(*(c.close() for _, c in pairs))


async def stalled_upload(args: argparse.Namespace, counts: collections.Counter[str]) -> None:
    pairs = await connected(args.n, args.kit, args.address)
    chunk = b"\0" * (1 << 20)
    stop = asyncio.Event()

    async def requests() -> Any:
        yield common_pb2.TransferChunk(
            header=common_pb2.TransferHeader(
                name="job.zip",
                size=10 << 20,
                sha256=hashlib.sha256(b"never sent").hexdigest(),
                content_type="application/zip",
            )
        )
        yield common_pb2.TransferChunk(data=chunk)
        await stop.wait()  # and then nothing, with the stream open

    async def run(stub: admin_pb2_grpc.AdminStub) -> None:
        try:
            await stub.SubmitJob(requests(), timeout=args.seconds + 30)
            counts["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            counts[outcome(exc)] += 1

    tasks = [asyncio.create_task(run(s)) for s, _ in pairs]
    await asyncio.sleep(0.5)
    ready()
    await asyncio.wait(tasks, timeout=args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close() for _, c in pairs))


async def slow_download(args: argparse.Namespace, counts: collections.Counter[str]) -> None:
    pairs = await connected(args.n, args.kit, args.address)
    request = admin_pb2.JobRequest(job_id=args.job)
    calls = [s.DownloadJobResult(request, metadata=[(METADATA_KEY, FILES)]) for s, _ in pairs]
    for call in calls:
        await call.read()  # the stream is under way
    ready()
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for call in calls:
            message = await call.read()
            counts["messages"] += message is not grpc.aio.EOF
        await asyncio.sleep(0.2)
    for call in calls:
        call.cancel()
    await asyncio.gather(*(c.close() for _, c in pairs))


async def list_jobs(args: argparse.Namespace, counts: collections.Counter[str]) -> None:
    pairs = await connected(args.n, args.kit, args.address)
    ready()
    end = time.monotonic() + args.seconds

    async def run(stub: admin_pb2_grpc.AdminStub) -> None:
        while time.monotonic() < end:
            try:
                await stub.ListJobs(admin_pb2.ListJobsRequest(), timeout=30)
                counts["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                counts[outcome(exc)] += 1

    await asyncio.gather(*(run(s) for s, _ in pairs))
    await asyncio.gather(*(c.close() for _, c in pairs))


def ready() -> None:
    print("ready", flush=True)


async def run(args: argparse.Namespace) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    kinds = {
        "handshake": handshake,
        "metadata": metadata,
        "stalled-upload": stalled_upload,
        "slow-download": slow_download,
        "list-jobs": list_jobs,
    }
    await kinds[args.kind](args, counts)
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--kit", type=Path, required=True, help="an admin kit")
    parser.add_argument("--address", required=True)
    parser.add_argument("-n", type=int, required=True, help="clients")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--job", default="", help="the job whose result slow-download reads")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
