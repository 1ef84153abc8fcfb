"""The Site service (site.proto): registration and the long-lived Channel, for site certificates.

A site calls ``Register`` (identity = its certificate), then opens one ``Channel`` whose
first message is a heartbeat carrying the session id. From then on heartbeats update the
registry and are acknowledged; envelopes go to :meth:`SiteRegistry.deliver` (a reply
resolves the forwarded request it answers; job traffic goes to the job runner, which
listens there); blobs move through :mod:`flare_server.blobs`. Messages queued for the site
(:meth:`SiteRegistry.send`) are written to the Channel as they arrive. The stream ends
when the site closes it, when its session is replaced or times out, or when the server
stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from flare_protocol import errors
from flare_protocol._generated import common_pb2, site_pb2, site_pb2_grpc
from flare_protocol.site_topics import Sender, topic_from
from flare_server.blobs import BlobRegistry, ref_of
from flare_server.call_limits import CallLimits
from flare_server.calls import Call, StreamTracker, streaming, unary
from flare_server.identity_check import IdentityChecker
from flare_server.sites import CLOSE, SiteRegistry

log = logging.getLogger("flare_server.site_service")

_ACK = site_pb2.ServerMessage(heartbeat_ack=common_pb2.Empty())


@dataclass(frozen=True)
class SiteContext:
    """What the Site service uses of the server."""

    checker: IdentityChecker
    """Site certificates only."""
    streams: StreamTracker
    registry: SiteRegistry
    blobs: BlobRegistry
    """The running jobs' blobs (the job runner's)."""
    project: str
    limits: CallLimits | None = None
    """Per-identity limits on calls and uploads (None: unlimited)."""


class SiteService(site_pb2_grpc.SiteServicer):
    """Register, Channel, and the blobs of running jobs (Download/Upload)."""

    def __init__(self, context: SiteContext) -> None:
        self.registry = context.registry
        self.blobs = context.blobs
        self.project = context.project
        self.checker = context.checker
        self.audit = None  # site traffic goes to the server log, not the admin audit log
        self.streams = context.streams
        self.limits = context.limits

    @unary("register")
    async def Register(
        self, call: Call, request: site_pb2.RegisterRequest, context: Any
    ) -> site_pb2.RegisterReply:
        site = self.registry.register(
            call.identity,
            call.peer,
            tuple(request.running_jobs),
            dict(request.resources),
        )
        return site_pb2.RegisterReply(
            session_id=site.session_id,
            heartbeat_interval=self.registry.heartbeat_interval,
            heartbeat_timeout=self.registry.heartbeat_timeout,
            project=self.project,
        )

    @streaming("channel")
    async def Channel(
        self, call: Call, request_iterator: AsyncIterator[site_pb2.SiteMessage], context: Any
    ) -> AsyncIterator[site_pb2.ServerMessage]:
        name = call.identity.name
        try:
            first = await asyncio.wait_for(
                request_iterator.__anext__(), self.registry.heartbeat_timeout
            )
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise errors.InvalidArgumentError(
                f"no heartbeat within {self.registry.heartbeat_timeout:g} s of opening the Channel"
            ) from None
        if first.WhichOneof("kind") != "heartbeat":
            raise errors.InvalidArgumentError(
                "the first Channel message must be a heartbeat carrying the session id"
            )
        site = self.registry.heartbeat(
            name, first.heartbeat.session_id, tuple(first.heartbeat.running_jobs)
        )
        if site.channel_open:
            raise errors.InvalidArgumentError(
                f"site {name} already has a Channel open for this session; register again"
            )
        site.channel_open = True
        session_id = site.session_id
        yield _ACK

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    kind = msg.WhichOneof("kind")
                    if kind == "heartbeat":
                        try:
                            current = self.registry.heartbeat(
                                name, msg.heartbeat.session_id, tuple(msg.heartbeat.running_jobs)
                            )
                        except errors.SessionExpired:
                            site.outbound.put_nowait(CLOSE)
                            return
                        current.outbound.put_nowait(_ACK)
                    elif kind == "message":
                        self._incoming(name, msg.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream broke: the site will reconnect
                log.info("channel of site %s ended: %s", name, exc)
            self.registry.disconnect(name, reason="channel closed", session_id=session_id)
            site.outbound.put_nowait(CLOSE)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await site.outbound.get()
                if item is CLOSE:
                    break
                yield item
        finally:
            site.channel_open = False
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.registry.disconnect(name, reason="channel ended", session_id=session_id)

    def _incoming(self, name: str, envelope: site_pb2.Envelope) -> None:
        # Only the topics a site may send (flare_protocol.site_topics); anything else is
        # logged and dropped, never dispatched by name.
        if topic_from(envelope.topic, Sender.SITE) is None:
            log.warning("site %s sent unknown topic %r; dropped", name, envelope.topic[:64])
            return
        self.registry.deliver(name, envelope)

    @streaming("download")
    async def Download(
        self, call: Call, request: site_pb2.BlobRequest, context: Any
    ) -> AsyncIterator[common_pb2.TransferChunk]:
        blob = self.blobs.served(call.identity.name, request.blob_id, request.job_id)
        async for chunk in self.blobs.stream(blob):
            yield chunk

    @unary("upload", upload=True)
    async def Upload(
        self, call: Call, request_iterator: AsyncIterator[common_pb2.TransferChunk], context: Any
    ) -> common_pb2.BlobRef:
        blob = await self.blobs.receive(call.identity.name, request_iterator)
        return ref_of(blob)
