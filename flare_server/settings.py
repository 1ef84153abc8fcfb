"""Server settings: the kit's ``local/settings.json`` plus command-line overrides.

Every key of :class:`ServerSettings` may appear at the top level of ``local/settings.json``
(or under a ``"server"`` object, which wins), read by the loader the site uses too
(:mod:`flare_protocol.settings_loader`): durations in seconds may carry an ``_s`` suffix
(``"heartbeat_timeout_s": 30``), nothing else may. Keys that are not server settings are
kept in ``extra`` and named in one warning at start-up, each with the closest setting; a
server setting of the wrong type or out of bounds stops start-up with a line naming the
file, the key and the expected type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_protocol.kit import LOCAL, SETTINGS, Kit
from flare_protocol.settings_loader import (
    check_settings,
    read_settings,
    setting,
    setting_keys,
    unknown_setting_keys,
)
from flare_server.jobs.archive import DEFAULT_MAX_RATIO

#: The object in settings.json whose keys win over the top level's.
SECTION = "server"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class ServerSettings:
    """How the server listens, what it bounds, and where it keeps its state."""

    host: str = setting("0.0.0.0")
    """Address both endpoints bind to."""
    admin_port: int | None = setting(None, low=0, high=65535)
    """Admin endpoint port; None means the kit's ``admin_port``; 0 picks a free port."""
    fed_learn_port: int | None = setting(None, low=0, high=65535)
    """Site endpoint port; None means the kit's ``fed_learn_port``; 0 picks a free port."""
    workspace: Path | None = setting(None)
    """Server workspace (jobs store, logs); None means ``<kit>/workspace``."""
    log_level: str = setting("INFO", choices=_LEVELS)
    """Level of ``logs/server.log`` and stderr (DEBUG, INFO, WARNING, ERROR)."""

    heartbeat_interval: float = setting(5.0, seconds=True)
    """Seconds between a site's heartbeats (told to the site at Register)."""
    heartbeat_timeout: float = setting(30.0, seconds=True)
    """Seconds without a heartbeat after which a site counts as disconnected."""
    site_command_timeout: float = setting(10.0, seconds=True)
    """Seconds to wait for a site's reply to a forwarded command before NoReply."""
    deploy_timeout: float = setting(120.0, seconds=True)
    """Seconds a job's sites get to answer ``job.deploy`` before it ends FAILED_TO_RUN."""
    reconnect_grace: float = setting(30.0, seconds=True)
    """Seconds a disconnected site of a running job gets to come back before it is lost."""
    resume_grace: float = setting(60.0, seconds=True, low=0.0)
    """Seconds a restarted server waits for the sites of a job that was RUNNING when it
    died (``kill -9``, a crash) to reconnect still running it; the job resumes from its
    last completed round with the sites back by then, or ends FINISHED:ABNORMAL when too
    few came back. 0 turns resuming off: such jobs end FINISHED:ABNORMAL at start-up."""
    log_wait: float = setting(30.0, seconds=True)
    """Seconds the runner waits for the sites' job logs when a job ends."""
    max_blob_bytes: int = setting(4 * 1024**3)
    """Largest model update a site may upload."""
    driver_idle_timeout: float = setting(600.0, seconds=True, low=0.0)
    """Seconds a driver job waits without its driver (no Driver API call, no reply stream
    open) before it ends FINISHED:ABNORMAL; a job's config may set its own."""
    update_memory_bytes: int = setting(1024**3)
    """Model updates are received into memory while those held there total at most this
    many bytes; beyond it they are written to files in the job's work area."""

    handshake_timeout_ms: int = setting(10_000)
    """A connection that has not completed its TLS handshake by then is closed."""
    max_connections: int = setting(1_000)
    """Open connections accepted per endpoint (before authentication)."""
    max_concurrent_streams: int = setting(100)
    """HTTP/2 streams one connection may have open at once."""
    max_concurrent_rpcs: int = setting(2_000)
    """RPCs in progress per endpoint; more are refused with RESOURCE_EXHAUSTED."""
    max_metadata_bytes: int = setting(16 * 1024)
    """Request metadata (headers) larger than this is refused."""
    max_message_bytes: int = setting(4 * 1024 * 1024)
    """Largest single message; big payloads are chunked streams, never a raised limit."""
    max_connection_idle_ms: int = setting(15 * 60 * 1000)
    """A connection with no RPC for this long is closed (sites keep a Channel open)."""
    min_ping_interval_ms: int = setting(10_000)
    """Keepalive pings more frequent than this are answered with GOAWAY."""
    max_calls_per_identity: int = setting(64)
    """Calls one identity (certificate name) may have in progress at once on one endpoint,
    open streams included; more are refused at once with LimitExceeded (RESOURCE_EXHAUSTED),
    so one busy or hostile peer cannot take the slots of ``max_concurrent_rpcs``."""
    max_uploads_per_identity: int = setting(8)
    """Of those, uploads (submit_job, a site's model update or log, a driver's push or final
    model); each holds a temp file and a receive window until it ends."""
    upload_idle_timeout: float = setting(60.0, seconds=True)
    """Seconds an upload may go without receiving anything before it is ended with
    LimitExceeded and its temp file removed (a stalled or abandoned client)."""
    grace_period: float = setting(5.0, seconds=True)
    """Seconds in-flight RPCs get to finish on a graceful stop."""

    max_upload_bytes: int = setting(2 * 1024**3)
    """Largest job archive accepted by SubmitJob (compressed bytes)."""
    max_uncompressed_bytes: int = setting(8 * 1024**3)
    """Largest total size of a job archive's entries once inflated."""
    max_entries: int = setting(10_000)
    """Most entries a job archive may hold."""
    max_compression_ratio: float = setting(DEFAULT_MAX_RATIO)
    """Largest uncompressed/compressed ratio of a job archive, per entry of 64 KiB or more
    and overall, read from its directory before anything is inflated (a zip bomb inside
    the upload cap). Deflate reaches about 1000:1 on zeros; code and weights stay far below."""

    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Keys of settings.json that are not server settings (kept for other components)."""

    @classmethod
    def keys(cls) -> frozenset[str]:
        """The keys settings.json may use: every setting, durations also with ``_s``."""
        return setting_keys(cls, SECTION)

    def unknown_keys(self) -> list[str]:
        """The keys of ``extra``, each with the closest setting if one is close."""
        return unknown_setting_keys(self.extra, type(self), SECTION)

    @classmethod
    def from_kit(cls, kit: Kit, **overrides: Any) -> ServerSettings:
        """Settings from ``<kit>/local/settings.json``; non-None ``overrides`` win.

        Raises:
            KitError: a server setting has the wrong type or value.
        """
        path = kit.root / LOCAL / SETTINGS
        read = read_settings(cls, kit.settings, source=path, section=SECTION)
        values = {**read.values, **{k: v for k, v in overrides.items() if v is not None}}
        settings = cls(**values, extra=read.unknown)
        settings.validate(path)
        return settings

    def validate(self, source: Path | str = "settings") -> None:
        """Raise KitError naming the key when a value has the wrong type or is out of range."""
        check_settings(self, source=source)

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
