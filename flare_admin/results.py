"""Typed results of the Session: frozen dataclasses that also read like FLARE's dicts.

Every result is a frozen dataclass (``meta.status``) that is also a read-only
:class:`~collections.abc.Mapping` with NVIDIA FLARE's keys (``meta["status"]``), so
scripts written against the FLARE API keep working and a renderer can turn any result
into a table. ``to_dict()`` gives a plain, JSON-ready ``dict``. Protobuf types never
appear here; the wire layer converts them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = [
    "ClientInfo",
    "JobMeta",
    "JobSummary",
    "MetricRow",
    "MonitorReturnCode",
    "ServerInfo",
    "SessionInfo",
    "SiteInfo",
    "SystemInfo",
    "TargetType",
    "ValidationRow",
    "rounds_table",
]


class MonitorReturnCode(enum.IntEnum):
    """Why :meth:`Session.monitor_job` returned (FLARE API values)."""

    JOB_FINISHED = 0
    TIMEOUT = 1
    ENDED_BY_CB = 2


class TargetType(str, enum.Enum):
    """Which participants a command addresses (FLARE API names)."""

    SERVER = "server"
    CLIENT = "client"
    ALL = "all"


def iso_time(unix_seconds: float) -> str:
    """ISO 8601 UTC text for a unix time; ``""`` for 0 (not set)."""
    if not unix_seconds:
        return ""
    return datetime.fromtimestamp(unix_seconds, timezone.utc).isoformat()


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


class _Record(Mapping[str, Any]):
    """Mapping behaviour for a frozen dataclass: its field names are its keys."""

    __slots__ = ()
    _keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        if not cls.__dict__.get("_keys"):
            cls._keys = tuple(f.name for f in fields(cls) if not f.name.startswith("_"))  # type: ignore[arg-type]
        return cls._keys

    def __getitem__(self, key: str) -> Any:
        if key in self._field_names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` (nested results converted too), ready for ``json.dumps``."""
        return {k: _plain(self[k]) for k in self}

    __hash__ = None  # type: ignore[assignment]  # results hold dicts; compare them, don't hash


@dataclass(frozen=True, eq=True)
class SessionInfo(_Record):
    """Who the server says we are (the reply to the Session's first call)."""

    name: str
    org: str
    role: str
    project: str
    server_version: str


@dataclass(frozen=True, eq=True)
class SiteInfo(_Record):
    """A connected site. ``last_connect_time`` is its last heartbeat (FLARE's name)."""

    name: str
    org: str = ""
    last_connect_time: float = 0.0
    connected_since: float = 0.0
    running_jobs: tuple[str, ...] = ()
    address: str = ""


#: FLARE API name of :class:`SiteInfo`.
ClientInfo = SiteInfo


@dataclass(frozen=True, eq=True)
class ServerInfo(_Record):
    """The server part of :class:`SystemInfo`."""

    name: str
    project: str
    status: str
    start_time: float
    version: str = ""


@dataclass(frozen=True, eq=True)
class JobSummary(_Record):
    """One row of ``list_jobs``: FLARE's keys ``job_id, job_name, status, submit_time, duration``.

    ``submit_time`` is ISO 8601 UTC text, as FLARE prints it; ``duration`` is in seconds
    (0 until the job started).
    """

    job_id: str
    job_name: str
    status: str
    submit_time: str
    duration: float
    submitter_name: str = ""
    submitter_org: str = ""


@dataclass(frozen=True, eq=True)
class SystemInfo(_Record):
    """``get_system_info``: the server, its connected sites and running jobs (FLARE's shape)."""

    server_info: ServerInfo
    client_info: tuple[SiteInfo, ...]
    job_info: tuple[JobSummary, ...]


def _opt_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


@dataclass(frozen=True, eq=True)
class JobMeta(_Record):
    """A job's full meta. Typed attributes for the common keys; as a mapping it holds
    every key the server sent (FLARE's meta dict: ``meta["status"]``, ``meta["deploy_map"]``).
    """

    job_id: str
    name: str
    status: str
    submitter_name: str = ""
    submitter_org: str = ""
    submitter_role: str = ""
    submit_time: float | None = None
    submit_time_iso: str = ""
    start_time: float | None = None
    duration: float | None = None
    min_clients: int | None = None
    deploy_map: Mapping[str, Any] = field(default_factory=dict)
    resource_spec: Mapping[str, Any] = field(default_factory=dict)
    mandatory_clients: tuple[str, ...] = ()
    cloned_from: str | None = None
    #: Why a SUBMITTED job still waits (e.g. ``waiting for sites: site-2 (deploy_map; not
    #: connected) / 1 of 2 min_clients connected``); empty once it was dispatched.
    schedule_reason: str = ""
    _data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobMeta:
        """Build from the server's meta dict; unknown keys are kept in the mapping view."""
        mc = data.get("min_clients")
        return cls(
            job_id=str(data.get("job_id", "")),
            name=str(data.get("name", data.get("job_name", ""))),
            status=str(data.get("status", "")),
            submitter_name=str(data.get("submitter_name") or ""),
            submitter_org=str(data.get("submitter_org") or ""),
            submitter_role=str(data.get("submitter_role") or ""),
            submit_time=_opt_float(data.get("submit_time")),
            submit_time_iso=str(data.get("submit_time_iso") or ""),
            start_time=_opt_float(data.get("start_time")),
            duration=_opt_float(data.get("duration")),
            min_clients=mc if isinstance(mc, int) and not isinstance(mc, bool) else None,
            deploy_map=MappingProxyType(_mapping(data.get("deploy_map"))),
            resource_spec=MappingProxyType(_mapping(data.get("resource_spec"))),
            mandatory_clients=tuple(_strings(data.get("mandatory_clients"))),
            cloned_from=str(data["cloned_from"]) if data.get("cloned_from") else None,
            schedule_reason=str(data.get("schedule_reason") or ""),
            _data=MappingProxyType(dict(data)),
        )

    @property
    def finished(self) -> bool:
        """True once the status is one of the ``FINISHED:*`` statuses."""
        return self.status.startswith("FINISHED")

    def __getitem__(self, key: str) -> Any:
        if self._data:
            return self._data[key]
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data) if self._data else super().__iter__()

    def __len__(self) -> int:
        return len(self._data) if self._data else super().__len__()


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


@dataclass(frozen=True, eq=True)
class MetricRow(_Record):
    """One metric a site streamed during a job (``flare.log_metric``, the SummaryWriter,
    or a training answer's ``metrics``): ``round`` and ``step`` may be None."""

    site: str
    round: int | None
    key: str
    value: float
    step: int | None = None
    time: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricRow:
        """From one row of the server's metrics log (untrusted JSON: types coerced)."""
        value = data.get("value")
        return cls(
            site=str(data.get("site", "")),
            round=_opt_int(data.get("round")),
            key=str(data.get("key", "")),
            value=float(value) if isinstance(value, (int, float)) else float("nan"),
            step=_opt_int(data.get("step")),
            time=_opt_float(data.get("time")) or 0.0,
        )


@dataclass(frozen=True, eq=True)
class ValidationRow(_Record):
    """A site's validation of the global model of ``round``: metric name -> value."""

    site: str
    round: int | None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationRow:
        """From one row of the server's validations log (untrusted JSON: types coerced)."""
        raw = data.get("metrics")
        metrics = {
            str(k): float(v)
            for k, v in (raw.items() if isinstance(raw, Mapping) else ())
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return cls(
            site=str(data.get("site", "")),
            round=_opt_int(data.get("round")),
            metrics=MappingProxyType(metrics),
        )


def rounds_table(
    metrics: Iterable[MetricRow], validations: Iterable[ValidationRow] = ()
) -> dict[int, dict[str, dict[str, float]]]:
    """Per round, per site, the last value of each metric (validations prefixed ``val:``
    unless their name already says so): ``{round: {site: {key: value}}}``, rounds sorted.

    Rows without a round are left out. Handy for printing a job's progress.
    """
    table: dict[int, dict[str, dict[str, float]]] = {}
    for row in metrics:
        if row.round is not None:
            table.setdefault(row.round, {}).setdefault(row.site, {})[row.key] = row.value
    for val in validations:
        if val.round is None:
            continue
        cell = table.setdefault(val.round, {}).setdefault(val.site, {})
        for key, value in val.metrics.items():
            cell[key if key.startswith("val") else f"val:{key}"] = value
    return {r: table[r] for r in sorted(table)}
