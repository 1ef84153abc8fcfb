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
from typing import Any, ClassVar, TypeAlias, TypeVar

from flare_protocol.job_status import JobStatus, is_finished

__all__ = [
    "CertificateExpiry",
    "ClientInfo",
    "ClientJobStatus",
    "DirEntry",
    "DirListing",
    "FileText",
    "JobEvent",
    "JobMeta",
    "JobRunSummary",
    "JobStatus",
    "JobSummary",
    "MetaChanged",
    "MetricRow",
    "MetricsArrived",
    "MonitorReturnCode",
    "RevocationUpdate",
    "RoundSummary",
    "ServerInfo",
    "SessionInfo",
    "SiteInfo",
    "SystemCommandResult",
    "SystemInfo",
    "TargetErrors",
    "TargetStats",
    "TargetType",
    "ValidationRow",
    "ValidationsArrived",
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


class _DictLike(_Record):
    """For results that replaced a plain ``dict``: they still compare equal to that dict
    (``result == {"server": "stopping"}``), so scripts written against the dict keep
    working; two results compare by their fields."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return all(
                getattr(self, f.name) == getattr(other, f.name)
                for f in fields(self)  # type: ignore[arg-type]
                if f.compare
            )
        if isinstance(other, Mapping) and not isinstance(other, _Record):
            return bool(self.to_dict() == _plain(other))
        return NotImplemented

    __hash__ = None


class _Document(_Record):
    """A result whose mapping view is the whole document the server sent (``_data``),
    while its typed fields pick out the parts a program uses; ``to_dict()`` gives the
    document back as it came."""

    __slots__ = ()
    _data: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        if self._data:
            return self._data[key]
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data) if self._data else super().__iter__()

    def __len__(self) -> int:
        return len(self._data) if self._data else super().__len__()


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

    @property
    def finished(self) -> bool:
        """True once the status is one of the ``FINISHED:*`` statuses (known or not)."""
        return is_finished(self.status)

    @property
    def job_status(self) -> JobStatus | None:
        """``status`` as a :class:`JobStatus` (None for a status this build does not know)."""
        return JobStatus.parse(self.status)


@dataclass(frozen=True, eq=True)
class CertificateExpiry(_Record):
    """A certificate that ends within 30 days (``SystemInfo.expiring``)."""

    #: ``server certificate``, ``root CA``, ``site certificate`` or ``admin certificate``.
    what: str
    #: The certificate's common name.
    name: str
    #: Its serial number, hex.
    serial: str
    #: When it ends, ISO 8601 UTC.
    not_after: str

    @property
    def days_left(self) -> float:
        """Days until it ends (negative once it has)."""
        end = datetime.fromisoformat(self.not_after)
        return (end - datetime.now(timezone.utc)).total_seconds() / 86400

    def describe(self) -> str:
        """``server certificate localhost (serial 1a2b) expires 2027-01-01 12:00 UTC (in 9
        day(s))``; an ended one says ``expired``."""
        left = self.days_left
        when = datetime.fromisoformat(self.not_after).strftime("%Y-%m-%d %H:%M UTC")
        span = f"in {left:.0f} day(s)" if left >= 1 else "in less than a day"
        verb = f"expires {when} ({span})" if left > 0 else f"expired {when}"
        return f"{self.what} {self.name} (serial {self.serial}) {verb}"


@dataclass(frozen=True, eq=True)
class SystemInfo(_Record):
    """``get_system_info``: the server, its connected sites and running jobs (FLARE's
    shape), and the certificates that end within 30 days (``expiring``, soonest first)."""

    server_info: ServerInfo
    client_info: tuple[SiteInfo, ...]
    job_info: tuple[JobSummary, ...]
    expiring: tuple[CertificateExpiry, ...] = ()


@dataclass(frozen=True, eq=True)
class RevocationUpdate(_Record):
    """``update_revocations``: the revocation list now in force on the server."""

    #: Certificate serials the server refuses now.
    revoked: int
    #: The CRL number of the list now in force.
    crl_number: int
    #: The CRL number of the list it replaced (0: none).
    previous_crl_number: int
    #: Open streams (watches, monitors, site connections) of revoked certificates ended.
    streams_dropped: int


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
class JobMeta(_Document):
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
        """True once the status is one of the ``FINISHED:*`` statuses (known or not)."""
        return is_finished(self.status)

    @property
    def job_status(self) -> JobStatus | None:
        """``status`` as a :class:`JobStatus` (None for a status this build does not know)."""
        return JobStatus.parse(self.status)


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
class MessageRow(_Record):
    """One row of a driver job's message log (docs/driver.md): a message the driver sent
    (``event`` "sent"), a reply (``"reply"``: from a site, or an error reply from the
    server) or a refused reply (``"refused"``, with the ``reason``)."""

    time: float
    event: str
    message_id: str | None = None
    reply_to: str | None = None
    message_type: str | None = None
    group_id: str | None = None
    src: str | None = None
    dst: str | None = None
    bytes: int = 0
    latency: float | None = None
    error: str | None = None
    reason: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MessageRow:
        """From one row of the server's message log (untrusted JSON: types coerced)."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            time=_opt_float(data.get("time")) or 0.0,
            event=str(data.get("event", "")),
            message_id=text("message_id"),
            reply_to=text("reply_to"),
            message_type=text("message_type"),
            group_id=text("group_id"),
            src=text("src"),
            dst=text("dst"),
            bytes=_opt_int(data.get("bytes")) or 0,
            latency=_opt_float(data.get("latency")),
            error=text("error"),
            reason=text("reason"),
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


# -- watching a job ----------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class MetaChanged(_Record):
    """:meth:`Session.watch_job`: the job's meta changed (the first event is the current
    meta; the last is the one whose ``meta.finished`` is True)."""

    kind: str = field(default="meta", init=False)
    meta: JobMeta = field(default_factory=lambda: JobMeta("", "", ""))


@dataclass(frozen=True, eq=True)
class MetricsArrived(_Record):
    """:meth:`Session.watch_job`: metric rows a site streamed, in the order the server
    wrote them (the same rows, in the same order, as :meth:`Session.get_job_metrics`)."""

    kind: str = field(default="metrics", init=False)
    rows: tuple[MetricRow, ...] = ()


@dataclass(frozen=True, eq=True)
class ValidationsArrived(_Record):
    """:meth:`Session.watch_job`: validation rows, as :meth:`Session.get_validations`."""

    kind: str = field(default="validations", init=False)
    rows: tuple[ValidationRow, ...] = ()


#: What :meth:`Session.watch_job` yields; tell them apart by type or by ``event.kind``
#: (``"meta"``, ``"metrics"``, ``"validations"``).
JobEvent: TypeAlias = MetaChanged | MetricsArrived | ValidationsArrived


# -- what the shell shows ----------------------------------------------------------------


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()


def _int_map(value: Any) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        return MappingProxyType({})
    return MappingProxyType({str(k): n for k, v in value.items() if (n := _opt_int(v)) is not None})


@dataclass(frozen=True, eq=False)
class RoundSummary(_DictLike, _Record):
    """One aggregated round of a job: which sites contributed and with how many examples."""

    round: int
    participants: Mapping[str, int] = field(default_factory=dict)
    params_types: Mapping[str, str] = field(default_factory=dict)
    late_sites: tuple[str, ...] = ()
    lost_sites: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundSummary:
        types = data.get("params_types")
        return cls(
            round=_opt_int(data.get("round")) or 0,
            participants=_int_map(data.get("participants")),
            params_types=MappingProxyType(
                {str(k): str(v) for k, v in types.items()} if isinstance(types, Mapping) else {}
            ),
            late_sites=_strs(data.get("late_sites")),
            lost_sites=_strs(data.get("lost_sites")),
        )


@dataclass(frozen=True, eq=False)
class JobRunSummary(_DictLike, _Document):
    """:meth:`Session.get_job_summary`: the server's ``summary.json`` of a finished job.

    Typed attributes for what a program or a renderer uses; as a mapping (and through
    ``to_dict()``) it is the whole ``summary.json``, every key the server wrote.
    """

    job_id: str
    name: str = ""
    status: str = ""
    reason: str = ""
    workflow: str | None = None
    num_rounds: int | None = None
    rounds_completed: int = 0
    sites: tuple[str, ...] = ()
    failed_sites: tuple[str, ...] = ()
    has_final_model: bool = False
    rounds: tuple[RoundSummary, ...] = ()
    start_time: float | None = None
    end_time: float | None = None
    _data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRunSummary:
        """From the server's summary (untrusted JSON: types coerced, every key kept)."""
        rounds = data.get("rounds")
        return cls(
            job_id=str(data.get("job_id") or ""),
            name=str(data.get("name") or ""),
            status=str(data.get("status") or ""),
            reason=str(data.get("reason") or ""),
            workflow=str(data["workflow"]) if data.get("workflow") else None,
            num_rounds=_opt_int(data.get("num_rounds")),
            rounds_completed=_opt_int(data.get("rounds_completed")) or 0,
            sites=_strs(data.get("sites")),
            failed_sites=_strs(data.get("failed_sites")),
            has_final_model=data.get("has_final_model") is True,
            rounds=tuple(
                RoundSummary.from_dict(r)
                for r in (rounds if isinstance(rounds, list) else ())
                if isinstance(r, Mapping)
            ),
            start_time=_opt_float(data.get("start_time")),
            end_time=_opt_float(data.get("end_time")),
            _data=MappingProxyType(dict(data)),
        )

    @property
    def job_status(self) -> JobStatus | None:
        """``status`` as a :class:`JobStatus` (None for a status this build does not know)."""
        return JobStatus.parse(self.status)

    @property
    def duration(self) -> float | None:
        """Seconds from the start of the run to its end (None when either is unknown)."""
        if self.start_time is None or self.end_time is None:
            return None
        return max(0.0, self.end_time - self.start_time)


class _TargetMap(_Record):
    """A result keyed by target (``"server"`` or a site name), in the server's order."""

    __slots__ = ()
    by_target: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.by_target[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_target)

    def __len__(self) -> int:
        return len(self.by_target)

    @property
    def targets(self) -> tuple[str, ...]:
        """The targets that answered, ``"server"`` first when it did."""
        return tuple(self.by_target)


@dataclass(frozen=True, eq=False)
class TargetStats(_DictLike, _TargetMap):
    """:meth:`Session.show_stats`: per target, its statistics (a JSON object each).

    A mapping ``target -> stats``, exactly as FLARE's dict: ``stats["server"]["status"]``.
    """

    by_target: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetStats:
        return cls(
            MappingProxyType(
                {
                    str(k): MappingProxyType(dict(v)) if isinstance(v, Mapping) else v
                    for k, v in data.items()
                }
            )
        )


@dataclass(frozen=True, eq=False)
class TargetErrors(_DictLike, _TargetMap):
    """:meth:`Session.show_errors`: per target, the errors it recorded (newest last).

    A mapping ``target -> (error, ...)``; each error is the JSON object the target sent
    (the server's: ``time, sites, message``; a site's: ``time, job_id, error``).
    """

    by_target: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetErrors:
        def entries(value: Any) -> tuple[Mapping[str, Any], ...]:
            items = (
                value if isinstance(value, (list, tuple)) else ([] if value is None else [value])
            )
            return tuple(
                MappingProxyType(dict(e))
                if isinstance(e, Mapping)
                else MappingProxyType({"message": str(e)})
                for e in items
            )

        return cls(MappingProxyType({str(k): entries(v) for k, v in data.items()}))

    @property
    def count(self) -> int:
        """How many errors all targets reported."""
        return sum(len(v) for v in self.by_target.values())


@dataclass(frozen=True, eq=False)
class SystemCommandResult(_DictLike, _Document):
    """:meth:`Session.shutdown`, :meth:`~Session.restart`, :meth:`~Session.shutdown_system`.

    ``server`` is what the server said it does (``"stopping"``, ``"restarting"``; None
    when it was not addressed); ``sites`` maps each addressed site to the same. As a
    mapping it is the server's reply as it came (``result["server"]``).
    """

    command: str
    server: str | None = None
    sites: Mapping[str, str] = field(default_factory=dict)
    #: Jobs that ``force=True`` aborted first.
    aborted_jobs: tuple[str, ...] = ()
    _data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, command: str, data: Mapping[str, Any]) -> SystemCommandResult:
        server = data.get("server")
        named = data.get("sites")
        if isinstance(named, list):  # shutdown_system: the sites it told to stop
            sites = {str(n): "stopping" for n in named}
        else:
            sites = {str(k): str(v) for k, v in data.items() if k not in ("server", "aborted_jobs")}
        return cls(
            command=command,
            server=str(server) if server is not None else None,
            sites=MappingProxyType(sites),
            aborted_jobs=_strs(data.get("aborted_jobs")),
            _data=MappingProxyType(dict(data)),
        )


@dataclass(frozen=True, eq=False)
class ClientJobStatus(_DictLike, _Record):
    """:meth:`Session.get_client_job_status`: the jobs one connected site runs now."""

    name: str
    running_jobs: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientJobStatus:
        return cls(str(data.get("name", "")), _strs(data.get("running_jobs")))


# -- file commands -----------------------------------------------------------------------


_Text = TypeVar("_Text", bound="FileText")


class FileText(str):
    """Text a file command returned (``cat``, ``head``, ``tail``, ``grep``, logs, ``pwd``).

    It *is* the text, a ``str`` as the FLARE API returns (print it, compare it, split
    it), and says what it is: ``truncated`` is True when the server capped it (1 MiB or
    10,000 lines), so a shown file may not be whole; ``target`` and ``path`` name where it
    came from. Comparison and hashing are the text's only; a new ``str`` made from it
    (slicing, ``+``) is a plain ``str``.
    """

    truncated: bool
    target: str
    path: str

    def __new__(
        cls: type[_Text],
        text: str = "",
        *,
        truncated: bool = False,
        target: str = "",
        path: str = "",
    ) -> _Text:
        self = super().__new__(cls, text)
        self.__dict__.update(truncated=bool(truncated), target=target, path=path)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))

    @property
    def text(self) -> str:
        """The text as a plain ``str``."""
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` (``text``, ``truncated``, ``target``, ``path``) for JSON."""
        return {
            "text": str(self),
            "truncated": self.truncated,
            "target": self.target,
            "path": self.path,
        }


def _rebuild(cls: type[FileText], text: str, attrs: dict[str, Any]) -> FileText:
    return cls(text, **attrs)


@dataclass(frozen=True, eq=True)
class DirEntry(_Record):
    """One entry of :meth:`Session.ls_target`: ``type`` is file, dir, link or other;
    ``mtime`` is unix seconds."""

    name: str
    type: str
    size: int = 0
    mtime: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DirEntry:
        return cls(
            name=str(data.get("name", "")),
            type=str(data.get("type", "other")),
            size=_opt_int(data.get("size")) or 0,
            mtime=_opt_float(data.get("mtime")) or 0.0,
        )

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


class DirListing(FileText):
    """:meth:`Session.ls_target`: the listing's text (a ``str``, as before) plus its
    ``entries`` (:class:`DirEntry`, in the server's order); ``truncated`` when the folder
    held more entries than the server lists (10,000)."""

    entries: tuple[DirEntry, ...]

    def __new__(
        cls,
        text: str = "",
        *,
        entries: Iterable[DirEntry] = (),
        truncated: bool = False,
        target: str = "",
        path: str = "",
    ) -> DirListing:
        self = super().__new__(cls, text, truncated=truncated, target=target, path=path)
        self.__dict__["entries"] = tuple(entries)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Like :meth:`FileText.to_dict`, plus ``entries`` as a list of dicts."""
        return {**super().to_dict(), "entries": [e.to_dict() for e in self.entries]}
