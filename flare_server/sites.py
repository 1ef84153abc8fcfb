"""The connected-site registry: who is connected, their heartbeats, and a queue to each.

Theory of operation. A site is *connected* from a successful ``Register`` until its
heartbeats stop for ``heartbeat_timeout`` seconds, its ``Channel`` ends, or it registers
again (which replaces the old session). Each connected site owns an outbound queue of
``Envelope``s that its ``Channel`` stream drains: it is the seam through which the next
issue pushes work, and through which :meth:`SiteRegistry.request` forwards a command and
awaits the site's reply. Listeners are told of every connect and disconnect (the scheduler
re-evaluates waiting jobs then), and of every heartbeat that lists running jobs (the job
runner makes sure each is still running there). Envelopes a site sends are
:meth:`SiteRegistry.deliver`-ed: a reply resolves the request it answers, anything else
goes to the message listeners (the job runner routes job traffic to the job's run).

The registry is confined to the server's event loop: call it from coroutines or callbacks
running on that loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flare_protocol._generated import site_pb2
from flare_protocol.errors import InvalidTarget, MessageError, NoReply, SessionExpired
from flare_protocol.expiry import Expiry
from flare_protocol.identity import Identity
from flare_protocol.site_topics import SiteCommand, SiteReply

log = logging.getLogger("flare_server.sites")

#: Put on a site's outbound queue to end its Channel stream.
CLOSE = None

#: (event, site name); events: "connected", "disconnected", and "running_jobs" (a heartbeat
#: that lists jobs the site runs: the job runner checks they are still running here).
SiteListener = Callable[[str, str], None]
#: (site name, envelope): a message from a connected site that answers no request.
MessageListener = Callable[[str, site_pb2.Envelope], None]


@dataclass
class ConnectedSite:
    """One connected site's session."""

    name: str
    org: str
    serial: int
    address: str
    session_id: str
    connected_since: float
    last_heartbeat: float
    running_jobs: tuple[str, ...] = ()
    resources: dict[str, str] = field(default_factory=dict)
    channel_open: bool = False
    #: When the site's certificate ends (for expiry warnings); None when not known.
    not_after: datetime | None = None
    outbound: asyncio.Queue[site_pb2.ServerMessage | None] = field(default_factory=asyncio.Queue)

    def snapshot(self) -> SiteSnapshot:
        return SiteSnapshot(
            name=self.name,
            org=self.org,
            address=self.address,
            connected_since=self.connected_since,
            last_heartbeat=self.last_heartbeat,
            running_jobs=self.running_jobs,
        )


@dataclass(frozen=True)
class SiteSnapshot:
    """A read-only view of a connected site, for replies and the scheduler."""

    name: str
    org: str
    address: str
    connected_since: float
    last_heartbeat: float
    running_jobs: tuple[str, ...]


class SiteRegistry:
    """Connected sites keyed by name (the name in their certificate)."""

    def __init__(self, *, heartbeat_interval: float, heartbeat_timeout: float) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._sites: dict[str, ConnectedSite] = {}
        self._listeners: list[SiteListener] = []
        self._message_listeners: tuple[MessageListener, ...] = ()
        self._pending: dict[str, asyncio.Future[SiteReply]] = {}
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the heartbeat-timeout reaper (on the running loop)."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for name in list(self._sites):
            self.disconnect(name, reason="server stopping")

    def subscribe(self, listener: SiteListener) -> None:
        """Tell ``listener(event, name)`` of connects, disconnects and running-job lists."""
        self._listeners.append(listener)

    def subscribe_messages(self, listener: MessageListener) -> Callable[[], None]:
        """Give ``listener(site, envelope)`` every message :meth:`deliver` does not take
        as a reply; returns the function that unsubscribes."""
        self._message_listeners = (*self._message_listeners, listener)

        def unsubscribe() -> None:
            self._message_listeners = tuple(
                cb for cb in self._message_listeners if cb is not listener
            )

        return unsubscribe

    # -- sessions ----------------------------------------------------------------------
    def register(
        self,
        identity: Identity,
        address: str,
        running_jobs: tuple[str, ...] = (),
        resources: dict[str, str] | None = None,
    ) -> ConnectedSite:
        """A new session for ``identity``; an older session of the same site ends."""
        if identity.name in self._sites:
            self.disconnect(identity.name, reason="site registered again")
        now = time.time()
        site = ConnectedSite(
            name=identity.name,
            org=identity.org,
            serial=identity.serial,
            address=address,
            session_id=uuid.uuid4().hex,
            connected_since=now,
            last_heartbeat=now,
            running_jobs=tuple(running_jobs),
            resources=dict(resources or {}),
            not_after=identity.not_after,
        )
        self._sites[site.name] = site
        log.info("site %s (%s) connected from %s", site.name, site.org, address)
        self._notify("connected", site.name)
        return site

    def session(self, name: str, session_id: str) -> ConnectedSite:
        """The live session ``session_id`` of site ``name``; SessionExpired otherwise."""
        site = self._sites.get(name)
        if site is None or site.session_id != session_id:
            raise SessionExpired(
                f"site {name}: session {session_id or '(none)'} is not current; register again",
                site=name,
            )
        return site

    def heartbeat(self, name: str, session_id: str, running_jobs: tuple[str, ...]) -> ConnectedSite:
        site = self.session(name, session_id)
        site.last_heartbeat = time.time()
        site.running_jobs = tuple(running_jobs)
        if site.running_jobs:
            self._notify("running_jobs", name)
        return site

    def disconnect(self, name: str, *, reason: str, session_id: str | None = None) -> bool:
        """End a site's session (only ``session_id``'s, when given); True if one ended."""
        site = self._sites.get(name)
        if site is None or (session_id is not None and site.session_id != session_id):
            return False
        del self._sites[name]
        site.outbound.put_nowait(CLOSE)
        log.info("site %s disconnected: %s", name, reason)
        self._notify("disconnected", name)
        return True

    def expire(self, now: float | None = None) -> list[str]:
        """Disconnect every site whose last heartbeat is older than the timeout."""
        now = time.time() if now is None else now
        gone = [
            s.name for s in self._sites.values() if now - s.last_heartbeat > self.heartbeat_timeout
        ]
        for name in gone:
            self.disconnect(name, reason=f"no heartbeat for {self.heartbeat_timeout:g} s")
        return gone

    def drop_serials(self, serials: frozenset[int]) -> list[str]:
        """Disconnect sites whose certificate serial is revoked."""
        gone = [s.name for s in self._sites.values() if s.serial in serials]
        for name in gone:
            self.disconnect(name, reason="certificate revoked")
        return gone

    # -- queries -----------------------------------------------------------------------
    def get(self, name: str) -> ConnectedSite | None:
        return self._sites.get(name)

    def names(self) -> list[str]:
        return sorted(self._sites)

    def certificates(self) -> list[Expiry]:
        """When each connected site's certificate ends."""
        return [
            Expiry("site certificate", s.name, s.serial, s.not_after)
            for s in self._sites.values()
            if s.not_after is not None
        ]

    def snapshots(self) -> list[SiteSnapshot]:
        return [self._sites[n].snapshot() for n in sorted(self._sites)]

    def __len__(self) -> int:
        return len(self._sites)

    def __contains__(self, name: object) -> bool:
        return name in self._sites

    # -- messages ----------------------------------------------------------------------
    def send(self, name: str, envelope: site_pb2.Envelope) -> None:
        """Queue a message for a connected site (InvalidTarget when not connected)."""
        site = self._sites.get(name)
        if site is None:
            raise InvalidTarget(f"site {name!r} is not connected", site=name)
        site.outbound.put_nowait(site_pb2.ServerMessage(message=envelope))

    def send_command(self, name: str, command: str, args: dict[str, Any] | None = None) -> None:
        """Queue a ``site.command`` that expects no reply (best effort)."""
        if name in self._sites:
            body = SiteCommand(command, args or {})
            self.send(
                name,
                site_pb2.Envelope(
                    message_id=uuid.uuid4().hex, topic=body.TOPIC.value, body_json=body.to_json()
                ),
            )

    async def request(
        self, name: str, command: SiteCommand, *, timeout: float, job_id: str = ""
    ) -> SiteReply:
        """Send ``command`` to a site and await its reply (NoReply on timeout)."""
        message_id = uuid.uuid4().hex
        future: asyncio.Future[SiteReply] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        topic = command.TOPIC.value
        try:
            self.send(
                name,
                site_pb2.Envelope(
                    message_id=message_id, job_id=job_id, topic=topic, body_json=command.to_json()
                ),
            )
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise NoReply(
                f"site {name} did not answer {topic!r} within {timeout:g} s", site=name
            ) from None
        finally:
            self._pending.pop(message_id, None)

    def deliver(self, site_name: str, envelope: site_pb2.Envelope) -> None:
        """A message from ``site_name``: the reply to a pending request resolves it;
        anything else (job traffic) goes to the message listeners."""
        if envelope.reply_to and self.deliver_reply(site_name, envelope):
            return
        for listener in self._message_listeners:
            try:
                listener(site_name, envelope)
            except Exception:  # a listener bug must not break the site's channel
                log.exception("message listener failed on %s from %s", envelope.topic, site_name)

    def deliver_reply(self, site_name: str, envelope: site_pb2.Envelope) -> bool:
        """Resolve the request an incoming envelope answers; False if it answers none."""
        future = self._pending.get(envelope.reply_to)
        if future is None or future.done():
            return False
        try:
            reply = SiteReply.from_json(envelope.body_json)
        except MessageError as exc:
            reply = SiteReply(error={"type": "InternalError", "message": exc.message})
        future.set_result(reply)
        return True

    # -- internals ---------------------------------------------------------------------
    def _notify(self, event: str, name: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, name)
            except Exception:  # a listener bug must not break the registry
                log.exception("site listener failed on %s %s", event, name)

    async def _reap_forever(self) -> None:
        period = max(0.05, min(self.heartbeat_interval, self.heartbeat_timeout) / 2)
        while True:
            await asyncio.sleep(period)
            self.expire()
