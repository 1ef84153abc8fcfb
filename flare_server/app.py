"""The server process: two mutual-TLS endpoints over one job store, registry and policy.

Theory of operation. :func:`~flare_server.server_kit.check_server_kit` refuses a kit whose
signature, key mode or certificate is wrong before anything listens. :class:`Server` is
the composition root: it builds each part with only what that part uses (see
:mod:`flare_server.parts`), and walks one lifecycle (:mod:`flare_server.server_state`).
``start()`` opens the job store (which runs crash recovery), builds the job runner, the
scheduler, the commands and the two services, binds the admin endpoint (``admin_port``,
admin certificates only) and the site endpoint (``fed_learn_port``, site certificates
only) as two grpc.aio servers, each with ``require_client_auth=True`` and the project
root as the only trust anchor, bounded before authentication by grpc core channel
arguments (:func:`~flare_server.endpoints.server_options`). Every part started registers
how it stops; ``stop()`` stops them in reverse order, so a start that failed half-way
stops exactly what it started. ``request_stop`` (SIGTERM, Ctrl-C, the shutdown command)
ends :meth:`Server.run`: the scheduler stops, running jobs end, watch streams end, sites
are disconnected, in-flight calls get ``grace_period`` seconds, and the store is closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from flare_protocol import errors
from flare_protocol._direct_io import replace_file
from flare_protocol._generated import admin_pb2_grpc, common_pb2, site_pb2_grpc
from flare_protocol.expiry import Expiry, expiring, expiry_of
from flare_protocol.identity import Identity, ParticipantType
from flare_protocol.kit import PARTICIPANTS, Kit
from flare_server.admin_service import (
    RESULT_WAIT_MARGIN,
    WATCH_END,
    AdminContext,
    AdminService,
)
from flare_server.audit import AuditLog
from flare_server.authz import Policy
from flare_server.call_limits import CallLimits
from flare_server.calls import Call, StreamTracker
from flare_server.commands import CommandContext, Commands
from flare_server.endpoints import bind, server_options
from flare_server.identity_check import IdentityChecker
from flare_server.job_runner import JobRunner
from flare_server.job_runner.resume import triage
from flare_server.jobs import ArchiveLimits, JobRepository, JobStore
from flare_server.model_source import check_model_source
from flare_server.project_sites import ProjectSites
from flare_server.results import RowSignals
from flare_server.revocations import Revocations, RevocationUpdate, parse_crl
from flare_server.scheduler import JobLauncher, Scheduler
from flare_server.server_cert import ServerCertificate
from flare_server.server_kit import check_server_kit, load_server_kit
from flare_server.server_state import ServerState, check_server_transition
from flare_server.settings import ServerSettings
from flare_server.site_service import SiteContext, SiteService
from flare_server.sites import SiteRegistry
from flare_server.uploads import receive_job
from flare_server.wrong_endpoint import ADMIN_SERVICE, SITE_SERVICE, WrongEndpoint

__all__ = ["Server", "ServerState", "check_server_kit", "load_server_kit", "server_options"]

log = logging.getLogger("flare_server")


class _ErrorLog(logging.Handler):
    """Keeps the last server errors for ``show_errors``."""

    def __init__(self, sink: collections.deque[dict[str, Any]]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append({"time": record.created, "message": record.getMessage()})


class Server:
    """The flare server: build with a loaded, checked kit; ``await start()``; ``await stop()``.

    ``launcher``: who runs the jobs the scheduler finds runnable (a test seam; default the
    :class:`~flare_server.job_runner.JobRunner`). The parts built by :meth:`start`
    (``store``, ``runner``, ``scheduler``, ``commands``, ``audit``) exist from
    ``STARTING`` on.
    """

    def __init__(
        self,
        kit: Kit,
        settings: ServerSettings | None = None,
        *,
        launcher: JobLauncher | None = None,
    ) -> None:
        self.kit = kit
        self.settings = settings or ServerSettings.from_kit(kit)
        self.workspace = (self.settings.workspace or kit.root / "workspace").resolve()
        self.policy = Policy.for_kit(kit.local)
        self.registry = SiteRegistry(
            heartbeat_interval=self.settings.heartbeat_interval,
            heartbeat_timeout=self.settings.heartbeat_timeout,
        )
        self.project_sites = ProjectSites.for_kit(kit, connected=self.registry.names)
        root = x509.load_pem_x509_certificate(kit.root_ca_path.read_bytes())
        self.root = root
        #: The revocation list in force (the newer of the workspace's and the kit's).
        self.revocations = Revocations(kit, self.workspace, root)
        revoked = self.revocations.serials
        self.admin_checker = IdentityChecker(ParticipantType.ADMIN, root, revoked)
        self.site_checker = IdentityChecker(ParticipantType.SITE, root, revoked)
        #: The certificate new connections get (rotated by :meth:`reload_kit`).
        self.certificate = ServerCertificate(kit, root)
        self.streams = StreamTracker()
        #: The queues of open watch streams (ended when the server stops).
        self.watchers: set[asyncio.Queue[Any]] = set()
        #: Wakes WatchJobEvents streams when a job's runner appends metric/validation rows.
        self.result_rows = RowSignals()
        self.errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.state = ServerState.NEW
        self.start_time = time.time()
        self.admin_port = 0
        self.site_port = 0
        self._launcher = launcher
        self._stop_requested = asyncio.Event()
        self._restart = False
        self._grace = self.settings.grace_period
        #: How each started part stops, pushed as it starts, unwound in reverse by stop().
        self._parts = contextlib.AsyncExitStack()
        self._log_handlers: list[logging.Handler] = []
        self.store: JobRepository
        self.audit: AuditLog
        self.runner: JobRunner
        self.launcher: JobLauncher
        self.scheduler: Scheduler
        self.commands: Commands

    # -- lifecycle ---------------------------------------------------------------------
    def _move(self, new: ServerState) -> None:
        self.state = check_server_transition(self.state, new)

    async def start(self) -> None:
        """Open the store and listen on both endpoints (ports are known afterwards).

        Raises:
            FlareError: a port cannot be bound, or the store cannot be opened (whatever
                was already started is stopped again).
            InvalidTransition: the server was started before.
        """
        self._move(ServerState.STARTING)
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise
        self._move(ServerState.SERVING)

    async def _start(self) -> None:
        s = self.settings
        parts = self._parts
        for sub in ("", "logs", "jobs"):
            (self.workspace / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._install_logging()
        self.audit = AuditLog(self.workspace / "logs" / "audit.log")
        parts.callback(self.audit.close)
        limits = ArchiveLimits(
            max_upload_bytes=s.max_upload_bytes,
            max_uncompressed_bytes=s.max_uncompressed_bytes,
            max_entries=s.max_entries,
            max_ratio=s.max_compression_ratio,
        )
        store: JobRepository = await asyncio.to_thread(
            functools.partial(
                JobStore.open,
                self.workspace / "jobs",
                limits=limits,
                definition_check=self.project_sites.check_job,
                # RUNNING jobs a crash interrupted are resumed (flare_server.job_runner.resume)
                keep_running=self._launcher is None and s.resume_grace > 0,
            )
        )
        self.store = store
        parts.push_async_callback(asyncio.to_thread, store.close)
        if self.project_sites.names is None:
            log.warning(
                "%s has no %s (a kit provisioned by an older flare): jobs naming sites that "
                "are not in the project are not refused; re-provision to get the file",
                self.kit.startup,
                PARTICIPANTS,
            )
        if self.settings.extra:
            log.warning(
                "%s: ignoring key(s) that are not server settings: %s",
                self.kit.local / "settings.json",
                ", ".join(self.settings.unknown_keys()),
            )
        log.info("job store recovery: %s", store.recovery)
        crl = self.revocations.current
        log.info(
            "revocation list in force: %s (CRL number %d, %d revoked serial(s))",
            crl.source,
            crl.number,
            len(self.revocations.serials),
        )
        for soon in self.expiring():
            log.warning("%s: provision new certificates and restart in time", soon.describe())
        self.runner = JobRunner(
            store,
            self.registry,
            s,
            self.policy,
            self.result_rows,
            owns_jobs=self._launcher is None,
        )
        self.launcher = self._launcher or self.runner
        resumable, not_resumed = await asyncio.to_thread(triage, store, store.recovery.jobs_running)
        ended = [*store.recovery.jobs_ended, *not_resumed]
        if ended:
            await asyncio.to_thread(self.runner.close_interrupted, ended)
        for job_id, loaded in resumable:  # before the site endpoint listens
            self.runner.resume(job_id, await asyncio.to_thread(store.get, job_id), loaded)
        self.scheduler = Scheduler(store, self.registry, self.launcher)
        self.runner.subscribe_run_ended(self.scheduler.poke)
        self.start_time = time.time()
        self.commands = Commands(
            CommandContext(
                store=store,
                registry=self.registry,
                policy=self.policy,
                runs=self.runner,
                server=self,
                workspace=self.workspace,
                errors=self.errors,
                start_time=self.start_time,
                site_command_timeout=s.site_command_timeout,
            )
        )
        admin_service = AdminService(
            AdminContext(
                checker=self.admin_checker,
                audit=self.audit,
                streams=self.streams,
                store=store,
                policy=self.policy,
                registry=self.registry,
                scheduler=self.scheduler,
                runs=self.runner,
                commands=self.commands,
                receive_job=self.receive_job,
                check_job_sites=self.project_sites.check_job,
                update_revocations=self.update_revocations,
                expiring=self.expiring,
                watchers=self.watchers,
                result_rows=self.result_rows,
                project=self.kit.project,
                server_name=self.kit.name,
                start_time=self.start_time,
                result_wait=s.log_wait + RESULT_WAIT_MARGIN,
                limits=self._limits("admin"),
            )
        )
        site_service = SiteService(
            SiteContext(
                checker=self.site_checker,
                streams=self.streams,
                registry=self.registry,
                blobs=self.runner.blobs,
                project=self.kit.project,
                limits=self._limits("site"),
            )
        )

        options = server_options(s)
        admin = grpc.aio.server(options=options, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
        admin_pb2_grpc.add_AdminServicer_to_server(admin_service, admin)
        admin.add_generic_rpc_handlers((WrongEndpoint(SITE_SERVICE, self._site_at_admin_port),))
        site = grpc.aio.server(options=options, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
        site_pb2_grpc.add_SiteServicer_to_server(site_service, site)
        site.add_generic_rpc_handlers((WrongEndpoint(ADMIN_SERVICE, self._admin_at_site_port),))
        admin_port = self.kit.server.admin_port if s.admin_port is None else s.admin_port
        site_port = self.kit.server.fed_learn_port if s.fed_learn_port is None else s.fed_learn_port
        # Dynamic credentials, one per port: reload_kit rotates the certificate that new
        # connections get, without a restart.
        self.admin_port = bind(admin, s.host, admin_port, self.certificate.credentials(), "admin")
        self.site_port = bind(site, s.host, site_port, self.certificate.credentials(), "site")
        parts.push_async_callback(self._stop_grpc, admin, site)
        await admin.start()
        await site.start()
        # Stopped in reverse: the scheduler first, then the runs (they tell their sites),
        # then the watch streams, then the sites' channels; the grpc servers after them.
        self.registry.start()
        parts.push_async_callback(self.registry.stop)
        parts.callback(self._end_watches)
        parts.push_async_callback(self.runner.stop)
        self.scheduler.start()
        parts.push_async_callback(self.scheduler.stop)
        log.info(
            "server %s of project %s listening: admin %s:%d, sites %s:%d, workspace %s, pid %d",
            self.kit.name,
            self.kit.project,
            s.host,
            self.admin_port,
            s.host,
            self.site_port,
            self.workspace,
            os.getpid(),
        )

    def request_stop(self, *, restart: bool = False, by: str = "signal") -> None:
        """Ask :meth:`run` to stop (thread-unsafe: call on the server's loop)."""
        if not self._stop_requested.is_set():
            log.info("%s requested by %s", "restart" if restart else "stop", by)
        self._restart = self._restart or restart
        self._stop_requested.set()

    async def wait_stop_requested(self) -> bool:
        """Wait for :meth:`request_stop`; True when a restart was asked for."""
        await self._stop_requested.wait()
        return self._restart

    async def run(self, ready_file: Path | None = None) -> bool:
        """Start, serve until a stop is requested, stop. True when a restart was asked for."""
        await self.start()
        try:
            if ready_file is not None:
                self.write_ready_file(ready_file)
            return await self.wait_stop_requested()
        finally:
            await self.stop()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: refuse new calls, let in-flight ones finish, close the store.

        Idempotent; a server that never started just ends ``STOPPED``.
        """
        if self.state in (ServerState.STOPPING, ServerState.STOPPED):
            return
        if self.state is ServerState.NEW:
            self._move(ServerState.STOPPED)
            return
        serving = self.state is ServerState.SERVING
        self._move(ServerState.STOPPING)
        self._grace = self.settings.grace_period if grace is None else grace
        try:
            await self._parts.aclose()
        finally:
            if serving:  # a start that failed says why itself; nothing was serving
                log.info("server stopped")
            for handler in self._log_handlers:
                logging.getLogger("flare_server").removeHandler(handler)
                handler.close()
            self._log_handlers.clear()
            self._move(ServerState.STOPPED)

    async def _stop_grpc(self, *servers: grpc.aio.Server) -> None:
        await asyncio.gather(*(srv.stop(self._grace) for srv in servers))

    def _end_watches(self) -> None:
        for queue in list(self.watchers):
            queue.put_nowait(WATCH_END)

    def write_ready_file(self, path: Path) -> None:
        """``{"admin_port", "fed_learn_port", "host", "pid", "workspace"}``, written atomically."""
        data = {
            "admin_port": self.admin_port,
            "fed_learn_port": self.site_port,
            "host": self.settings.host,
            "pid": os.getpid(),
            "workspace": str(self.workspace),
        }
        replace_file(Path(path), json.dumps(data).encode(), mode=0o644)

    # -- revocation and rotation -------------------------------------------------------
    def revoke(self, serials: Iterable[int]) -> int:
        """Refuse these serials from now on and drop their open streams; streams dropped
        (a test seam: revocations in production come as signed lists)."""
        merged = self.admin_checker.revoked | frozenset(serials)
        return self._apply_revoked(merged)

    async def update_revocations(self, data: bytes, by: str = "") -> RevocationUpdate:
        """Take a newer CRL signed by the project root: persist it in the workspace, then
        refuse its serials and drop their open streams and site connections.

        Raises:
            RevocationListRejected: not the project CA's, malformed, or not newer than the
                list in force (``reason``, ``crl_number``, ``in_force`` say which).
        """
        crl = parse_crl(data, self.root, "the revocation list sent" + (f" by {by}" if by else ""))
        revocations = self.revocations
        revocations.check_newer(crl)  # fails fast; accept() checks again under its lock
        try:
            previous = await asyncio.to_thread(revocations.accept, crl)
        except OSError as exc:
            raise errors.InternalError(
                f"cannot keep the revocation list in {revocations.path}: {exc.strerror or exc}; "
                "nothing changed: free the disk or fix the folder's permissions, then send it again"
            ) from exc
        serials = revocations.serials
        dropped = self._apply_revoked(serials)
        log.warning(
            "revocation list updated%s: CRL number %d (was %d), %d revoked serial(s), "
            "%d open stream(s) dropped; kept in %s",
            f" by {by}" if by else "",
            crl.number,
            previous,
            len(serials),
            dropped,
            revocations.path,
        )
        return RevocationUpdate(
            revoked=len(serials), crl_number=crl.number, previous=previous, streams_dropped=dropped
        )

    def reload_kit(self) -> int:
        """SIGHUP, once a re-provisioned server kit's ``startup/`` files were copied over this
        kit's: take its revocation list if newer, re-read ``revoked.json`` and
        ``participants.json``, and serve its certificate to new connections. Logs every
        outcome; anything unusable leaves what is in force. Streams dropped."""
        from flare_protocol.signature import verify_kit

        before = len(self.admin_checker.revoked)
        try:
            accepted = self.revocations.reload_kit()
        except errors.FlareError as exc:
            log.error("revocation list not reloaded, the one in force stays: %s", exc)
            dropped = 0
        else:
            serials = self.revocations.serials
            dropped = self._apply_revoked(serials)
            crl = self.revocations.current
            log.info(
                "revocation list reloaded from %s: %d revoked serial(s) (before: %d), "
                "%s, %d open stream(s) dropped",
                self.kit.startup,
                len(serials),
                before,
                f"CRL number {crl.number} accepted"
                if accepted
                else f"CRL number {crl.number} stays in force",
                dropped,
            )
        self.certificate.reload()
        try:
            verify_kit(self.kit.root)
        except errors.KitError as exc:
            log.error(
                "the kit %s no longer verifies (%s): what was reloaded is in force, but the "
                "server will not start from this kit again; copy every file of the new kit's "
                "startup/ folder",
                self.kit.root,
                exc,
            )
        self.project_sites.reload(self.kit)
        return dropped

    def expiring(self, caller: Identity | None = None) -> list[Expiry]:
        """Certificates that end within 30 days: the server's, the root CA, connected
        sites', and ``caller``'s when given; soonest first."""
        items = [self.certificate.expiry(), expiry_of("root CA", self.root)]
        items += self.registry.certificates()
        if caller is not None:
            items.append(
                Expiry(
                    f"{caller.type.value} certificate", caller.name, caller.serial, caller.not_after
                )
            )
        return expiring(items)

    def _apply_revoked(self, serials: frozenset[int]) -> int:
        self.admin_checker.set_revoked(serials)
        self.site_checker.set_revoked(serials)
        dropped = len(self.registry.drop_serials(serials))
        dropped += self.streams.revoke(serials)
        if dropped:
            log.warning("revocation dropped %d open stream(s)", dropped)
        return dropped

    # -- used by the services ----------------------------------------------------------
    async def receive_job(
        self, call: Call, chunks: AsyncIterator[common_pb2.TransferChunk]
    ) -> dict[str, Any]:
        """Stream a SubmitJob upload into the store (:mod:`flare_server.uploads`); returns
        the committed job meta."""
        meta = await receive_job(
            self.store,
            call,
            chunks,
            max_bytes=self.settings.max_upload_bytes,
            check_model_source=self.check_model_source,
        )
        self.scheduler.poke()
        return meta

    async def check_model_source(self, call: Call, model_job: str) -> None:
        """``model_job``'s final model may seed a new job: the caller may download it, the
        job completed and has one (:func:`~flare_server.model_source.authorize_model_source`).

        Raises:
            JobNotFound, AuthorizationError, JobNotDone (with the job's status).
        """
        await check_model_source(self.store, self.policy, call.identity, model_job)

    # -- internals ---------------------------------------------------------------------
    def _limits(self, endpoint: str) -> CallLimits:
        s = self.settings
        return CallLimits(
            max_calls=s.max_calls_per_identity,
            max_uploads=s.max_uploads_per_identity,
            upload_idle_timeout=s.upload_idle_timeout,
            endpoint=endpoint,
        )

    def _admin_at_site_port(self) -> str:
        return (
            f"this is the site port (fed_learn_port {self.site_port}) of the flare server "
            f"{self.kit.name}; the admin port is {self.admin_port}: open admin sessions there "
            f"(server_address='<host>:{self.admin_port}', or leave it out to use the kit's)"
        )

    def _site_at_admin_port(self) -> str:
        return (
            f"this is the admin port (admin_port {self.admin_port}) of the flare server "
            f"{self.kit.name}; the site port (fed_learn_port) is {self.site_port}: point the "
            f"site there (--server <host>:{self.site_port}, or leave it out to use the kit's)"
        )

    def _install_logging(self) -> None:
        from flare_server import log_owner

        logger = logging.getLogger("flare_server")
        logger.setLevel(self.settings.log_level.upper())
        handler = logging.FileHandler(self.workspace / "logs" / "server.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        errors_handler = _ErrorLog(self.errors)
        log_owner.claim(self)  # another Server in this process must not get our records
        for h in (handler, errors_handler):
            h.addFilter(log_owner.OwnRecords(self))
            logger.addHandler(h)
            self._log_handlers.append(h)
