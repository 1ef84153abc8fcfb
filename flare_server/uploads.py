"""Receiving a job upload (``SubmitJob``) into the job store.

Theory of operation. The stream's rules (a header first, the size within
``max_upload_bytes``, exactly the announced bytes, their SHA-256) are kept by the one
:class:`~flare_protocol.transfer.ChunkReceiver`; the store's :class:`Upload` writes the
bytes with ``O_DIRECT`` and hashes each chunk in its own thread. One write is in flight
while the next chunk arrives: writing (in a worker thread, GIL released) overlaps with
receiving (on the loop). Nothing is visible until the store commits the whole, checked
archive; any failure discards it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from flare_protocol import errors
from flare_protocol._generated import common_pb2
from flare_protocol.transfer import ChunkReceiver
from flare_server.admin_service import submitter_of
from flare_server.calls import Call
from flare_server.jobs import JobRepository

log = logging.getLogger("flare_server")

__all__ = ["SUBMIT_PARAMS", "receive_job"]

#: Header params a SubmitJob stream may carry (anything else is refused).
SUBMIT_PARAMS = frozenset({"initial_model_job_id"})


async def receive_job(
    store: JobRepository,
    call: Call,
    chunks: AsyncIterator[common_pb2.TransferChunk],
    *,
    max_bytes: int,
    check_model_source: Callable[[Call, str], Awaitable[None]],
) -> dict[str, Any]:
    """Stream a SubmitJob upload into ``store``; returns the committed job's meta.

    Raises:
        InvalidJobDefinition: over ``max_bytes``, or refused by the store's checks.
        InvalidArgumentError: the stream breaks the transfer rules or names an unknown
            parameter.
        JobNotFound, AuthorizationError, JobNotDone: ``initial_model_job_id`` may not
            seed this job (``check_model_source``).
    """
    receiver = ChunkReceiver(
        "the job archive",
        max_bytes=max_bytes,
        cap_error=errors.InvalidJobDefinition,
        cap_setting="the server's max_upload_bytes",
        hash_data=False,  # the store hashes in its own thread
    )
    first = await anext(aiter(chunks), None)
    header = receiver.first_header(first)
    call.args = {"name": header.name[:128], "size": header.size}  # audited if refused too
    receiver.on_header(header)
    params = dict(header.params)
    unknown = sorted(set(params) - SUBMIT_PARAMS)
    if unknown:
        raise errors.InvalidArgumentError(f"unknown submit parameter(s): {', '.join(unknown)}")
    model_job = params.get("initial_model_job_id")
    if model_job:
        await check_model_source(call, model_job)
    upload = await asyncio.to_thread(store.begin_upload)
    loop = asyncio.get_running_loop()
    writing: asyncio.Future[None] | None = None
    try:
        async for message in chunks:
            data = receiver.feed(message)
            if data is None:
                continue
            if writing is not None:
                await writing
            writing = loop.run_in_executor(None, upload.write, data)
        if writing is not None:
            await writing
            writing = None
        receiver.finish(upload.sha256)
        received = time.perf_counter()
        job = await asyncio.to_thread(upload.commit, submitter_of(call), params=params or None)
        log.debug(
            "upload of %d bytes: commit (validate, store durably) took %.3f s",
            receiver.received,
            time.perf_counter() - received,
        )
    except BaseException:
        receiver.cancel()
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        await asyncio.to_thread(upload.abort)
        raise
    meta = dict(job)
    call.job_id = str(meta["job_id"])
    log.info("job %s (%s) submitted by %s", meta["job_id"], meta.get("name"), call.identity.name)
    return meta
