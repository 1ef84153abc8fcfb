"""Server settings: the kit's ``local/settings.json`` plus command-line overrides.

Every key of :class:`ServerSettings` may appear at the top level of ``local/settings.json``
(or under a ``"server"`` object, which wins); durations in seconds may carry an ``_s``
suffix (``"heartbeat_timeout_s": 30``). Keys that are not server settings are kept in
``extra`` and named in one warning at start-up, each with the closest setting
(:func:`flare_protocol.known_keys.unknown_keys`); a server setting of the wrong type stops
start-up with a line naming the file, the key and the expected type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from flare_protocol.errors import KitError
from flare_protocol.kit import LOCAL, SETTINGS, Kit
from flare_protocol.known_keys import unknown_keys
from flare_server.jobs.archive import DEFAULT_MAX_RATIO


@dataclass(frozen=True)
class ServerSettings:
    """How the server listens, what it bounds, and where it keeps its state."""

    host: str = "0.0.0.0"
    """Address both endpoints bind to."""
    admin_port: int | None = None
    """Admin endpoint port; None means the kit's ``admin_port``; 0 picks a free port."""
    fed_learn_port: int | None = None
    """Site endpoint port; None means the kit's ``fed_learn_port``; 0 picks a free port."""
    workspace: Path | None = None
    """Server workspace (jobs store, logs); None means ``<kit>/workspace``."""
    log_level: str = "INFO"
    """Level of ``logs/server.log`` and stderr (DEBUG, INFO, WARNING, ERROR)."""

    heartbeat_interval: float = 5.0
    """Seconds between a site's heartbeats (told to the site at Register)."""
    heartbeat_timeout: float = 30.0
    """Seconds without a heartbeat after which a site counts as disconnected."""
    site_command_timeout: float = 10.0
    """Seconds to wait for a site's reply to a forwarded command before NoReply."""
    deploy_timeout: float = 120.0
    """Seconds a job's sites get to answer ``job.deploy`` before it ends FAILED_TO_RUN."""
    reconnect_grace: float = 30.0
    """Seconds a disconnected site of a running job gets to come back before it is lost."""
    log_wait: float = 30.0
    """Seconds the runner waits for the sites' job logs when a job ends."""
    max_blob_bytes: int = 4 * 1024**3
    """Largest model update a site may upload."""
    driver_idle_timeout: float = 600.0
    """Seconds a driver job waits without its driver (no Driver API call, no reply stream
    open) before it ends FINISHED:ABNORMAL; a job's config may set its own."""
    update_memory_bytes: int = 1024**3
    """Model updates are received into memory while those held there total at most this
    many bytes; beyond it they are written to files in the job's work area."""

    handshake_timeout_ms: int = 10_000
    """A connection that has not completed its TLS handshake by then is closed."""
    max_connections: int = 1_000
    """Open connections accepted per endpoint (before authentication)."""
    max_concurrent_streams: int = 100
    """HTTP/2 streams one connection may have open at once."""
    max_concurrent_rpcs: int = 2_000
    """RPCs in progress per endpoint; more are refused with RESOURCE_EXHAUSTED."""
    max_metadata_bytes: int = 16 * 1024
    """Request metadata (headers) larger than this is refused."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest single message; big payloads are chunked streams, never a raised limit."""
    max_connection_idle_ms: int = 15 * 60 * 1000
    """A connection with no RPC for this long is closed (sites keep a Channel open)."""
    min_ping_interval_ms: int = 10_000
    """Keepalive pings more frequent than this are answered with GOAWAY."""
    grace_period: float = 5.0
    """Seconds in-flight RPCs get to finish on a graceful stop."""

    max_upload_bytes: int = 2 * 1024**3
    """Largest job archive accepted by SubmitJob (compressed bytes)."""
    max_uncompressed_bytes: int = 8 * 1024**3
    """Largest total size of a job archive's entries once inflated."""
    max_entries: int = 10_000
    """Most entries a job archive may hold."""
    max_compression_ratio: float = DEFAULT_MAX_RATIO
    """Largest uncompressed/compressed ratio of a job archive, per entry of 64 KiB or more
    and overall, read from its directory before anything is inflated (a zip bomb inside
    the upload cap). Deflate reaches about 1000:1 on zeros; code and weights stay far below."""

    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Keys of settings.json that are not server settings (kept for other components)."""

    @classmethod
    def keys(cls) -> frozenset[str]:
        """The keys settings.json may use: every setting, durations also with ``_s``."""
        names = {f.name for f in fields(cls) if f.name != "extra"}
        seconds = {f"{f.name}_s" for f in fields(cls) if f.default.__class__ is float}
        return frozenset(names | seconds | {"server"})

    def unknown_keys(self) -> list[str]:
        """The keys of ``extra``, each with the closest setting if one is close."""
        return unknown_keys(sorted(self.extra), self.keys())

    @classmethod
    def from_kit(cls, kit: Kit, **overrides: Any) -> ServerSettings:
        """Settings from ``<kit>/local/settings.json``; non-None ``overrides`` win.

        Raises:
            KitError: a server setting has the wrong type or value.
        """
        raw: dict[str, Any] = dict(kit.settings)
        nested = raw.pop("server", None)
        if isinstance(nested, dict):
            raw.update(nested)
        path = kit.root / LOCAL / SETTINGS
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            name = key
            if name not in known and name.endswith("_s") and name[:-2] in known:
                name = name[:-2]  # "heartbeat_timeout_s": seconds spelled out
            if name not in known:
                extra[key] = value
                continue
            values[name] = _coerce(path, name, value, cls, key)
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        settings = cls(**values, extra=extra)
        settings.validate(path)
        return settings

    def validate(self, source: Path | str = "settings") -> None:
        """Raise KitError naming the key when a value is out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if f.name.endswith("_port"):
                    if not 0 <= value <= 65535:
                        raise KitError(f"{source}: '{f.name}' must be a port 0..65535, got {value}")
                elif value <= 0:
                    raise KitError(f"{source}: '{f.name}' must be positive, got {value}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise KitError(f"{source}: 'log_level' must be DEBUG, INFO, WARNING or ERROR")

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _coerce(path: Path, name: str, value: Any, cls: type[ServerSettings], key: str) -> Any:
    default = next(f for f in fields(cls) if f.name == name).default
    if name == "workspace":
        if not isinstance(value, str):
            raise KitError(f"{path}: '{key}' must be a path string, got {value!r}")
        return Path(value)
    if name in ("admin_port", "fed_learn_port"):
        if value is None:
            return None
        default = 0
    if isinstance(default, bool) or isinstance(value, bool):
        raise KitError(f"{path}: '{key}' must be a number, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int):
            raise KitError(f"{path}: '{key}' must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)):
            what = "a number" if name == "max_compression_ratio" else "a number of seconds"
            raise KitError(f"{path}: '{key}' must be {what}, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise KitError(f"{path}: '{key}' must be a string, got {value!r}")
        return value
    return value
