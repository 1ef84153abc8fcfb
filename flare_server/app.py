"""The server process: two mutual-TLS endpoints over one job store, registry and policy.

Theory of operation. :func:`check_server_kit` refuses a kit whose signature, key mode or
certificate is wrong before anything listens. :class:`Server` then opens the job store
(which runs crash recovery), binds the admin endpoint (``admin_port``, admin certificates
only) and the site endpoint (``fed_learn_port``, site certificates only) as two grpc.aio
servers, each with ``require_client_auth=True`` and the project root as the only trust
anchor. Both are bounded before authentication by grpc core channel arguments (see
:func:`server_options`). ``request_stop`` (SIGTERM, Ctrl-C, the shutdown command) ends
:meth:`Server.run`: new calls are refused, in-flight calls get ``grace_period`` seconds,
long-lived streams are ended, and the store is closed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from flare_protocol import errors
from flare_protocol._generated import admin_pb2, admin_pb2_grpc, common_pb2, site_pb2, site_pb2_grpc
from flare_protocol.credentials import server_credentials
from flare_protocol.identity import ParticipantType, identity_from_certificate
from flare_protocol.kit import PARTICIPANTS, REVOKED, Kit, load_kit
from flare_server.admin_service import _WATCH_END, AdminService, site_info_pb, submitter_of
from flare_server.audit import AuditLog
from flare_server.authz import Policy
from flare_server.calls import Call, StreamTracker
from flare_server.commands import Commands
from flare_server.identity_check import IdentityChecker, load_revoked
from flare_server.job_runner import JobRunner
from flare_server.jobs import ArchiveLimits, JobStore
from flare_server.model_source import authorize_model_source
from flare_server.project_sites import ProjectSites
from flare_server.results import RowSignals
from flare_server.scheduler import JobLauncher, Scheduler
from flare_server.settings import ServerSettings
from flare_server.site_service import SiteService
from flare_server.sites import SiteRegistry
from flare_server.wrong_endpoint import ADMIN_SERVICE, SITE_SERVICE, WrongEndpoint

log = logging.getLogger("flare_server")

#: Header params a SubmitJob stream may carry (anything else is refused).
SUBMIT_PARAMS = frozenset({"initial_model_job_id"})


def check_server_kit(kit: Kit) -> x509.Certificate:
    """Refuse a server kit that is tampered, has a loose key or a wrong certificate.

    Raises:
        KitError (a subclass naming the file and the fix).
    """
    from flare_protocol.signature import verify_kit

    verify_kit(kit.root)
    key = kit.key_path
    try:
        mode = stat.S_IMODE(os.stat(key).st_mode)
    except FileNotFoundError:
        raise errors.KitIncomplete(f"missing server key {key}", path=str(key)) from None
    if mode & 0o077:
        raise errors.KeyFilePermissions(
            f"{key} is readable by group or others (mode {mode:04o}); run: chmod 600 {key}",
            path=str(key),
        )
    try:
        from flare_protocol.preflight import check_kit
    except ImportError:  # pragma: no cover - pre-flight lands with the Session
        cert = x509.load_pem_x509_certificate(kit.cert_path.read_bytes())
    else:
        cert = check_kit(kit)
    try:
        identity_from_certificate(cert, ParticipantType.SERVER)
    except errors.IdentityRejected as exc:
        raise errors.KitError(
            f"{kit.cert_path} is not a usable server certificate: {exc.message}",
            path=str(kit.cert_path),
        ) from None
    return cert


def server_options(s: ServerSettings) -> list[tuple[str, Any]]:
    """grpc core channel arguments that bound every connection, before authentication."""
    return [
        ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_metadata_size", s.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", s.max_metadata_bytes),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", s.handshake_timeout_ms),
        ("grpc.max_allowed_incoming_connections", s.max_connections),
        ("grpc.max_connection_idle_ms", s.max_connection_idle_ms),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", s.min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 3),
        # A fixed 4 MiB receive window per stream instead of a BDP-probed one: an upload
        # whose disk is slower than the network cannot make the server buffer more.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
    ]


class _ErrorLog(logging.Handler):
    """Keeps the last server errors for ``show_errors``."""

    def __init__(self, sink: collections.deque[dict[str, Any]]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append({"time": record.created, "message": record.getMessage()})


class Server:
    """The flare server: build with a loaded, checked kit; ``await start()``; ``await stop()``."""

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
        self.project_sites = ProjectSites.for_kit(kit, connected=lambda: self.registry.names())
        revoked = load_revoked(kit.startup / REVOKED)
        root = x509.load_pem_x509_certificate(kit.root_ca_path.read_bytes())
        self.admin_checker = IdentityChecker(ParticipantType.ADMIN, root, revoked)
        self.site_checker = IdentityChecker(ParticipantType.SITE, root, revoked)
        self.streams = StreamTracker()
        self.watchers: set[asyncio.Queue[Any]] = set()
        #: Wakes WatchJobEvents streams when a job's runner appends metric/validation rows.
        self.result_rows = RowSignals()
        self.errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.registry = SiteRegistry(
            heartbeat_interval=self.settings.heartbeat_interval,
            heartbeat_timeout=self.settings.heartbeat_timeout,
        )
        self.start_time = time.time()
        self.admin_port = 0
        self.site_port = 0
        self._launcher = launcher
        self._stop_requested = asyncio.Event()
        self._restart = False
        self._stopped = False
        self._listening = False
        self._log_handlers: list[logging.Handler] = []
        self._grpc_servers: list[grpc.aio.Server] = []
        self.store: JobStore
        self.audit: AuditLog | None = None
        self.commands = Commands(self)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store and listen on both endpoints (ports are known afterwards).

        Raises:
            FlareError: a port cannot be bound, or the store cannot be opened (whatever
                was already started is stopped again).
        """
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        s = self.settings
        for sub in ("", "logs", "jobs"):
            (self.workspace / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._install_logging()
        self.audit = AuditLog(self.workspace / "logs" / "audit.log")
        limits = ArchiveLimits(
            max_upload_bytes=s.max_upload_bytes,
            max_uncompressed_bytes=s.max_uncompressed_bytes,
            max_entries=s.max_entries,
            max_ratio=s.max_compression_ratio,
        )
        self.store = await asyncio.to_thread(JobStore.open, self.workspace / "jobs", limits=limits)
        self.store.definition_check = self.project_sites.check_job
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
        recovery = getattr(self.store, "recovery", None)
        if recovery is not None:
            log.info("job store recovery: %s", recovery)
        self.runner = JobRunner(self)
        self.launcher = self._launcher or self.runner
        if recovery is not None and recovery.jobs_ended:
            await asyncio.to_thread(self.runner.close_interrupted, recovery.jobs_ended)
        self.scheduler = Scheduler(self.store, self.registry, self.launcher)

        creds = server_credentials(self.kit)
        options = server_options(s)
        admin = grpc.aio.server(options=options, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self), admin)
        admin.add_generic_rpc_handlers((WrongEndpoint(SITE_SERVICE, self._site_at_admin_port),))
        site = grpc.aio.server(options=options, maximum_concurrent_rpcs=s.max_concurrent_rpcs)
        site_pb2_grpc.add_SiteServicer_to_server(SiteService(self), site)
        site.add_generic_rpc_handlers((WrongEndpoint(ADMIN_SERVICE, self._admin_at_site_port),))
        admin_port = self.kit.server.admin_port if s.admin_port is None else s.admin_port
        site_port = self.kit.server.fed_learn_port if s.fed_learn_port is None else s.fed_learn_port
        self.admin_port = _bind(admin, s.host, admin_port, creds, "admin")
        self.site_port = _bind(site, s.host, site_port, creds, "site")
        self._grpc_servers = [admin, site]
        await admin.start()
        await site.start()
        self._listening = True
        self.registry.start()
        self.scheduler.start()
        self.start_time = time.time()
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
        """Graceful stop: refuse new calls, let in-flight ones finish, close the store."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_period if grace is None else grace
        if hasattr(self, "scheduler"):
            await self.scheduler.stop()
        if hasattr(self, "runner"):
            await self.runner.stop()
        for queue in list(self.watchers):
            queue.put_nowait(_WATCH_END)
        await self.registry.stop()
        await asyncio.gather(*(srv.stop(grace) for srv in self._grpc_servers))
        if hasattr(self, "store"):
            await asyncio.to_thread(self.store.close)
        if self.audit is not None:
            self.audit.close()
        if self._listening:  # a start that failed says why itself; nothing was serving
            log.info("server stopped")
        for handler in self._log_handlers:
            logging.getLogger("flare_server").removeHandler(handler)
            handler.close()
        self._log_handlers.clear()

    def write_ready_file(self, path: Path) -> None:
        """``{"admin_port", "fed_learn_port", "host", "pid", "workspace"}``, written atomically."""
        data = {
            "admin_port": self.admin_port,
            "fed_learn_port": self.site_port,
            "host": self.settings.host,
            "pid": os.getpid(),
            "workspace": str(self.workspace),
        }
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # -- revocation --------------------------------------------------------------------
    def revoke(self, serials: Iterable[int]) -> int:
        """Refuse these serials from now on and drop their open streams; streams dropped."""
        merged = self.admin_checker.revoked | frozenset(serials)
        return self._apply_revoked(merged)

    def reload_revoked(self) -> int:
        """Re-read ``startup/revoked.json`` (on SIGHUP, once a re-provisioned server kit's
        ``startup/`` files were copied over this kit's); streams dropped. Logs the outcome;
        an unreadable list leaves the one in force."""
        from flare_protocol.signature import verify_kit

        path = self.kit.startup / REVOKED
        try:
            serials = load_revoked(path)
        except errors.FlareError as exc:
            log.error("revocation list not reloaded, the previous one stays in force: %s", exc)
            return 0
        before = len(self.admin_checker.revoked)
        dropped = self._apply_revoked(serials)
        log.info(
            "revocation list reloaded from %s: %d revoked serial(s) (before: %d), "
            "%d open stream(s) dropped",
            path,
            len(serials),
            before,
            dropped,
        )
        try:
            verify_kit(self.kit.root)
        except errors.KitError as exc:
            log.error(
                "the kit %s no longer verifies (%s): the list is in force, but the server "
                "will not start from this kit again; copy every file of the new kit's "
                "startup/ folder, not only %s",
                self.kit.root,
                exc,
                REVOKED,
            )
        self.project_sites.reload(self.kit)
        return dropped

    def _apply_revoked(self, serials: frozenset[int]) -> int:
        self.admin_checker.set_revoked(serials)
        self.site_checker.set_revoked(serials)
        dropped = len(self.registry.drop_serials(serials))
        dropped += self.streams.revoke(serials)
        if dropped:
            log.warning("revocation dropped %d open stream(s)", dropped)
        return dropped

    # -- used by the services ----------------------------------------------------------
    def site_infos(self) -> list[admin_pb2.SiteInfo]:
        return [site_info_pb(s) for s in self.registry.snapshots()]

    async def receive_job(
        self, call: Call, chunks: AsyncIterator[common_pb2.TransferChunk]
    ) -> dict[str, Any]:
        """Stream a SubmitJob upload into the store; returns the committed job meta."""
        cap = self.settings.max_upload_bytes
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            raise errors.InvalidJobDefinition("the upload was empty: no header, no job") from None
        if first.WhichOneof("item") != "header":
            raise errors.InvalidArgumentError("a job upload must start with a TransferHeader")
        header = first.header
        call.args = {"name": header.name[:128], "size": header.size}
        if header.size > cap:
            raise errors.InvalidJobDefinition(
                f"the job archive is {header.size} bytes; the server accepts at most {cap}",
                size=header.size,
            )
        params = dict(header.params)
        unknown = sorted(set(params) - SUBMIT_PARAMS)
        if unknown:
            raise errors.InvalidArgumentError(f"unknown submit parameter(s): {', '.join(unknown)}")
        model_job = params.get("initial_model_job_id")
        if model_job:
            await self.check_model_source(call, model_job)
        upload = await asyncio.to_thread(self.store.begin_upload)
        loop = asyncio.get_running_loop()
        writing: asyncio.Future[None] | None = None
        try:
            total = 0
            # One write in flight while the next chunk arrives: hashing and writing (in a
            # worker thread, GIL released) overlap with receiving (on the loop).
            async for msg in chunks:
                if msg.WhichOneof("item") != "data":
                    raise errors.InvalidArgumentError("a job upload carries one header only")
                data = msg.data  # one copy out of the message (each access copies)
                total += len(data)
                if total > cap:
                    raise errors.InvalidJobDefinition(
                        f"the job archive exceeds the server's upload cap of {cap} bytes",
                        size=total,
                    )
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(None, upload.write, data)
            if writing is not None:
                await writing
                writing = None
            if header.size >= 0 and total != header.size:
                raise errors.InvalidArgumentError(
                    f"the upload ended after {total} of the announced {header.size} bytes"
                )
            if header.sha256 and upload.sha256 != header.sha256.lower():
                raise errors.InvalidArgumentError(
                    "the job archive's SHA-256 does not match its header; the upload was damaged"
                )
            received = time.perf_counter()
            job = await asyncio.to_thread(upload.commit, submitter_of(call), params=params or None)
            log.debug(
                "upload of %d bytes: commit (validate, store durably) took %.3f s",
                total,
                time.perf_counter() - received,
            )
        except BaseException:
            if writing is not None:
                await asyncio.gather(writing, return_exceptions=True)
            await asyncio.to_thread(upload.abort)
            raise
        meta = dict(job)
        call.job_id = str(meta["job_id"])
        log.info(
            "job %s (%s) submitted by %s", meta["job_id"], meta.get("name"), call.identity.name
        )
        self.scheduler.poke()
        return meta

    async def check_model_source(self, call: Call, model_job: str) -> None:
        """``model_job``'s final model may seed a new job: the caller may download it, the
        job completed and has one (:func:`~flare_server.model_source.authorize_model_source`).

        Raises:
            JobNotFound, AuthorizationError, JobNotDone (with the job's status).
        """
        await asyncio.to_thread(
            authorize_model_source, self.store, self.policy, call.identity, model_job
        )

    def notify_sites_abort(self, meta: dict[str, Any], reason: str = "aborted by an admin") -> None:
        """Tell the job's run and its sites that it was aborted (best effort)."""
        if hasattr(self, "runner"):
            self.runner.abort(str(meta["job_id"]), reason)
        for site in meta.get("deployed_sites") or ():
            if site in self.registry:
                self.registry.send(
                    site,
                    site_pb2.Envelope(
                        job_id=str(meta["job_id"]),
                        topic="job.abort",
                        body_json=json.dumps({"reason": reason}),
                    ),
                )

    def on_site_message(self, site: str, envelope: site_pb2.Envelope) -> None:
        """Job traffic from sites (status, results, metrics, logs) goes to the job's run."""
        if hasattr(self, "runner"):
            self.runner.on_site_message(site, envelope)

    # -- internals ---------------------------------------------------------------------
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


def _bind(
    server: grpc.aio.Server, host: str, port: int, creds: grpc.ServerCredentials, what: str
) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, creds)
    except RuntimeError as exc:
        raise errors.FlareError(
            f"cannot listen on {address} for the {what} endpoint: {exc}"
        ) from None
    if not bound:
        raise errors.FlareError(
            f"cannot listen on {address} for the {what} endpoint (port in use or not allowed)"
        )
    return bound


def load_server_kit(kit_dir: str | Path) -> Kit:
    """Load a server kit (config only; :func:`check_server_kit` does the checks)."""
    return load_kit(kit_dir, ParticipantType.SERVER)
