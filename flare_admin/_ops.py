"""One description per Session method, shared by the sync and async transports.

Each function checks its arguments (raising ``InvalidArgumentError`` before any call),
builds the request and says how to read the reply, as an :class:`Unary`. ``Session``
runs it with a blocking stub and ``AsyncSession`` with an awaitable one; neither
repeats the argument checks, request building or reply parsing. Protobuf types stay
inside this module and the transports.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

from flare_admin.results import (
    CertificateExpiry,
    ClientJobStatus,
    DirEntry,
    DirListing,
    FileText,
    JobEvent,
    JobMeta,
    JobRunSummary,
    JobSummary,
    MessageRow,
    MetaChanged,
    MetricRow,
    MetricsArrived,
    RevocationUpdate,
    ServerInfo,
    SessionInfo,
    SiteInfo,
    SystemCommandResult,
    SystemInfo,
    TargetErrors,
    TargetStats,
    TargetType,
    ValidationRow,
    ValidationsArrived,
    iso_time,
)
from flare_protocol._generated import admin_pb2, common_pb2
from flare_protocol.errors import (
    InternalError,
    InvalidArgumentError,
    InvalidTarget,
    JobNotDone,
    JobTimeout,
    LocalIOError,
    NoConnection,
)
from flare_protocol.job_status import JobStatus, is_job_id, is_job_id_prefix

_SITE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
_EMPTY = common_pb2.Empty()

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Unary(Generic[T]):
    """A unary call: the stub method's name, its request and how to read its reply (a
    ``T``: each Session method is checked against the type it declares).

    ``split``/``merge`` (optional): when the reply would exceed the 4 MiB message cap, the
    transport runs the smaller operations ``split()`` returns and ``merge``s their results.
    """

    rpc: str
    request: Any
    parse: Callable[[Any], T]
    action: str
    job_id: str | None = None
    split: Callable[[], list[Unary[T]]] | None = None
    merge: Callable[[list[T]], T] | None = None

    def parts(self, exc: Any) -> list[Unary[T]] | None:
        """The smaller calls to make instead, when ``exc`` says the reply was too big for
        one message and this call can be split (None: it cannot)."""
        if self.split is None or self.merge is None or not reply_too_large(exc):
            return None
        return self.split() or None


class ReplyTooLarge(Exception):
    """Internal signal: a reply exceeded the message cap and the operation can be split."""


def reply_too_large(exc: Any) -> bool:
    """True for a call that failed because its reply exceeded the message size cap."""
    try:
        code, text = exc.code(), exc.details() or ""
    except Exception:
        return False
    return code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in text


# -- argument checks ---------------------------------------------------------------------


def job_id(value: object) -> str:
    """A well-formed job id (a UUID, as the server generates them), lower-cased."""
    if not isinstance(value, str) or not is_job_id(value.lower()):
        raise InvalidArgumentError(
            f"job id {value!r} is malformed: job ids are UUIDs like "
            "'3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11' (see list_jobs())",
            job_id=value if isinstance(value, str) else repr(value),
        )
    return value.lower()


def _target(value: object) -> str:
    if not isinstance(value, str) or not (value == "server" or _SITE_NAME.match(value)):
        raise InvalidTarget(
            f"target {value!r} is neither 'server' nor a site name", target=repr(value)
        )
    return value


def _target_type(value: object) -> str:
    try:
        return TargetType(value).value
    except ValueError:
        raise InvalidTarget(
            f"target type {value!r} is not one of 'server', 'client', 'all'", target=repr(value)
        ) from None


def _names(value: Iterable[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    try:
        names = list(value)
    except TypeError:
        raise InvalidTarget(f"{what}s must be a list of site names, got {value!r}") from None
    for name in names:
        if not isinstance(name, str) or not _SITE_NAME.match(name):
            raise InvalidTarget(f"{what} {name!r} is not a valid site name", target=repr(name))
    return names


def _opt_str(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {value!r}")
    return value


#: Longest deadline accepted (a year): gRPC cannot represent an infinite one.
MAX_SECONDS = 365 * 24 * 3600.0


def timeout_value(value: object, what: str = "timeout") -> float:
    """A non-negative, finite number of seconds (at most a year)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_SECONDS
    ):
        raise InvalidArgumentError(
            f"{what} must be a number of seconds from 0 to {MAX_SECONDS:.0f}, got {value!r}"
        )
    return float(value)


# -- reply parsing -----------------------------------------------------------------------


def _json_object(text: str, what: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except (ValueError, RecursionError) as exc:
        raise InternalError(f"the server sent malformed JSON for {what}: {exc}") from exc


def parse_meta(reply: Any) -> JobMeta:
    """A ``JobReply`` as :class:`JobMeta`."""
    data = _json_object(reply.meta_json, "a job meta")
    if not isinstance(data, dict):
        raise InternalError("the server sent a job meta that is not a JSON object")
    data.setdefault("job_id", reply.job_id)
    return JobMeta.from_dict(data)


def _site(pb: Any) -> SiteInfo:
    return SiteInfo(
        name=pb.name,
        org=pb.org,
        last_connect_time=pb.last_heartbeat,
        connected_since=pb.connected_since,
        running_jobs=tuple(pb.running_jobs),
        address=pb.address,
    )


def _summary(pb: Any) -> JobSummary:
    return JobSummary(
        pb.job_id,
        pb.name,
        pb.status,
        iso_time(pb.submit_time),
        pb.duration,
        pb.submitter_name,
        pb.submitter_org,
    )


def _hello(reply: Any) -> SessionInfo:
    return SessionInfo(
        name=reply.name,
        org=reply.org,
        role=reply.role,
        project=reply.project,
        server_version=reply.server_version,
    )


def _system_info(reply: Any) -> SystemInfo:
    return SystemInfo(
        server_info=ServerInfo(
            name=reply.server_name,
            project=reply.project,
            status="started",
            start_time=reply.start_time,
            version=reply.server_version,
        ),
        client_info=tuple(_site(s) for s in reply.sites),
        job_info=tuple(_summary(j) for j in reply.running_jobs),
        expiring=tuple(
            CertificateExpiry(e.what, e.name, e.serial, iso_time(e.not_after))
            for e in reply.expiring
        ),
    )


def _revocation_update(reply: Any) -> RevocationUpdate:
    return RevocationUpdate(
        revoked=reply.revoked,
        crl_number=reply.crl_number,
        previous_crl_number=reply.previous_crl_number,
        streams_dropped=reply.streams_dropped,
    )


def _list_jobs(detailed: bool) -> Callable[[Any], list[Any]]:
    def parse(reply: Any) -> list[Any]:
        if detailed and reply.meta_json:
            out = []
            for row, text in zip(reply.jobs, reply.meta_json, strict=False):
                data = _json_object(text, "a job meta")
                if not isinstance(data, dict):
                    raise InternalError("the server sent a job meta that is not a JSON object")
                data.setdefault("job_id", row.job_id)
                out.append(JobMeta.from_dict(data))
            return out
        return [_summary(j) for j in reply.jobs]

    return parse


def _none(reply: Any) -> None:
    return None


def _job_id_of(reply: Any) -> str:
    return str(reply.job_id)


def _command_result(reply: Any) -> Any:
    return _json_object(reply.result_json, "a command result")


def _file_text(target: str, path: str) -> Callable[[Any], FileText]:
    """File commands answer ``{"text": "...", "truncated": bool}`` (or a bare JSON string)."""

    def parse(reply: Any) -> FileText:
        result = _command_result(reply)
        truncated = False
        if isinstance(result, Mapping) and "text" in result:
            text, truncated = str(result["text"]), result.get("truncated") is True
        elif isinstance(result, str):
            text = result
        else:
            text = json.dumps(result)
        return FileText(text, truncated=truncated, target=target, path=path)

    return parse


def _listing(target: str, path: str) -> Callable[[Any], DirListing]:
    """``ls`` answers ``{"entries": [{name, type, size, mtime}], "text", "truncated"?}``."""

    def parse(reply: Any) -> DirListing:
        result = _command_result(reply)
        if not isinstance(result, Mapping):
            return DirListing(str(result), target=target, path=path)
        raw = result.get("entries")
        entries = [DirEntry.from_dict(e) for e in raw or () if isinstance(e, Mapping)]
        return DirListing(
            str(result.get("text", "")),
            entries=entries,
            truncated=result.get("truncated") is True,
            target=target,
            path=path,
        )

    return parse


# -- the operations ----------------------------------------------------------------------


def ping_failed(exc: Any, address: str, seconds: float) -> NoConnection | None:
    """A ping waits for the channel: running out of time means the server is not there."""
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return NoConnection(
            f"the server at {address} did not answer within {seconds:g} s: is it running and "
            "is the address right?",
            address=address,
        )
    return None


def hello() -> Unary[SessionInfo]:
    return Unary("Hello", _EMPTY, _hello, "open session")


def get_system_info() -> Unary[SystemInfo]:
    return Unary("GetSystemInfo", _EMPTY, _system_info, "get_system_info")


#: A revocation list larger than this cannot travel in one message (about 100,000 serials).
MAX_CRL_BYTES = 3 * 1024 * 1024


def update_revocations(path: str | os.PathLike[str]) -> Unary[RevocationUpdate]:
    """Read the CRL at ``path`` (a local file) into an UpdateRevocations call."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InvalidArgumentError(
            f"update_revocations takes the path of a revocation list (a .crl file), got {path!r}"
        )
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if size > MAX_CRL_BYTES:
            raise InvalidArgumentError(
                f"{file} holds {size} bytes, more than a revocation list of at most "
                f"{MAX_CRL_BYTES} bytes: is it the revocations.crl flare provision wrote?",
                path=str(file),
            )
        data = file.read_bytes()
    except IsADirectoryError:
        raise InvalidArgumentError(
            f"{file} is a folder; give the revocations.crl file in it", path=str(file)
        ) from None
    except OSError as exc:
        raise LocalIOError.of(exc, "read the revocation list", file) from exc
    request = admin_pb2.UpdateRevocationsRequest(crl=data)
    return Unary("UpdateRevocations", request, _revocation_update, "update_revocations")


def list_jobs(
    detailed: bool = False,
    limit: int | None = None,
    id_prefix: str | None = None,
    name_prefix: str | None = None,
    reverse: bool = False,
    *,
    all: bool = False,
) -> Unary[list[Any]]:
    # ``all``: NVIDIA FLARE's FLARE API once had it ("every job, not the first few"); it
    # was dropped there for limit=None, and its migration guide still shows it. Accepted.
    if not isinstance(all, bool):
        raise InvalidArgumentError(f"all must be True or False, got {all!r}")
    if all and limit is not None:
        raise InvalidArgumentError(
            f"list_jobs(all=True, limit={limit!r}): all=True lists every job; pass one of them"
        )
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**31
    ):
        raise InvalidArgumentError(f"limit must be an integer >= 0 or None, got {limit!r}")
    if id_prefix is not None and (not is_job_id_prefix(id_prefix)):
        raise InvalidArgumentError(
            f"id_prefix {id_prefix!r} is not the start of a job id (hex digits and '-')"
        )
    name_prefix = _opt_str(name_prefix, "name_prefix")
    request = admin_pb2.ListJobsRequest(
        detailed=bool(detailed),
        limit=limit or 0,
        id_prefix=(id_prefix or "").lower(),
        name_prefix=name_prefix or "",
        reverse=bool(reverse),
    )
    return _list_op(request)


#: Characters a job id (a UUID) may hold at each position: hex digits, '-' at 8, 13, 18, 23.
_HEX = "0123456789abcdef"


def _list_op(request: Any) -> Unary[list[Any]]:
    """ListJobs, splittable by id prefix: a list too big for one reply (tens of thousands
    of jobs, or thousands of detailed metas) is fetched in up to 16 parts per level."""

    def split() -> list[Unary]:
        prefix = request.id_prefix
        if len(prefix) >= 36:
            return []
        chars = "-" if len(prefix) in (8, 13, 18, 23) else _HEX
        parts = []
        for char in chars:
            sub = admin_pb2.ListJobsRequest()
            sub.CopyFrom(request)
            sub.id_prefix = prefix + char
            parts.append(_list_op(sub))
        return parts

    def merge(results: list[Any]) -> list[Any]:
        rows = [row for part in results for row in part]
        # summaries carry ISO text, metas unix seconds: either sorts by time within a kind
        rows.sort(
            key=lambda r: (r.submit_time if r.submit_time is not None else 0.0, r.job_id),
            reverse=request.reverse,
        )
        return rows[: request.limit] if request.limit else rows

    return Unary(
        "ListJobs", request, _list_jobs(request.detailed), "list_jobs", split=split, merge=merge
    )


def get_job_meta(jid: str) -> Unary[JobMeta]:
    jid = job_id(jid)
    return Unary("GetJobMeta", admin_pb2.JobRequest(job_id=jid), parse_meta, "get_job_meta", jid)


def initial_model_job_id(value: object) -> str | None:
    """The job whose final global model a new job starts from (None: its own)."""
    return None if value is None else job_id(value)


def model_source_ready(meta: JobMeta) -> None:
    """Before an upload: the job named by ``initial_model_job_id`` must have completed.

    The server checks it again (with the caller's right to download it); checking first
    fails fast, before a large job is streamed for nothing.

    Raises:
        JobNotDone: it has not finished ``FINISHED:COMPLETED`` (its status attached).
    """
    if meta.status != JobStatus.FINISHED_COMPLETED:
        raise JobNotDone(
            f"job {meta.job_id} cannot seed a new job: it is {meta.status or 'unknown'}; "
            "use a job that finished FINISHED:COMPLETED",
            job_id=meta.job_id,
            status=meta.status,
        )


def clone_job(jid: str, initial_model: str | None = None) -> Unary[str]:
    jid = job_id(jid)
    source = initial_model_job_id(initial_model)
    request = admin_pb2.CloneJobRequest(job_id=jid, initial_model_job_id=source or "")
    return Unary("CloneJob", request, _job_id_of, "clone_job", jid)


def abort_job(jid: str) -> Unary[None]:
    jid = job_id(jid)
    return Unary("AbortJob", admin_pb2.JobRequest(job_id=jid), _none, "abort_job", jid)


def delete_job(jid: str) -> Unary[None]:
    jid = job_id(jid)
    return Unary("DeleteJob", admin_pb2.JobRequest(job_id=jid), _none, "delete_job", jid)


def get_connected_client_list() -> Unary[list[SiteInfo]]:
    def parse(reply: Any) -> list[SiteInfo]:
        return [_site(s) for s in reply.sites]

    return Unary("GetConnectedSites", _EMPTY, parse, "get_connected_client_list")


def command(
    name: str,
    args: Mapping[str, Any],
    parse: Callable[[Any], T],
    job: str | None = None,
) -> Unary[T]:
    """A named server command (``Command`` RPC); ``None`` arguments are left out."""
    payload = {k: v for k, v in args.items() if v is not None}
    request = admin_pb2.CommandRequest(command=name, args_json=json.dumps(payload))
    return Unary("Command", request, parse, name, job)


#: Log file of each target, relative to its workspace.
LOG_FILES = {"server": "logs/server.log"}
SITE_LOG_FILE = "logs/site.log"


def _options(
    options: object, allowed: dict[str, str], numeric: str | None = None
) -> dict[str, Any]:
    """FLARE-style option text (``"-l"``, ``"-n 20"``, ``"-20"``, ``"-i"``) as command args."""
    text = _opt_str(options, "options")
    if not text:
        return {}
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"options {text!r} cannot be parsed: {exc}") from None
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if numeric and word == "-n" and i + 1 < len(words) and words[i + 1].isdigit():
            out[numeric] = int(words[i + 1])
            i += 2
            continue
        if numeric and re.fullmatch(r"-(?:n)?\d+", word):
            out[numeric] = int(word.lstrip("-n"))
        elif word in allowed:
            out[allowed[word]] = True
        else:
            known = sorted(allowed) + (["-n N"] if numeric else [])
            raise InvalidArgumentError(
                f"option {word!r} is not supported here; supported: {', '.join(known) or 'none'}"
            )
        i += 1
    return out


def get_job_logs(jid: str, target: str = "server") -> Unary[FileText]:
    """The lines of ``target``'s log that mention the job (numbered, as ``grep -n``); the
    right to download the job is enough (no shell commands)."""
    jid = job_id(jid)
    args = {"job_id": jid, "target": _target(target)}
    return command("job_logs", args, _file_text(target, log_file(target)), jid)


def _sites_result(reply: Any) -> list[ClientJobStatus]:
    result = _command_result(reply)
    sites = result.get("sites") if isinstance(result, Mapping) else result
    if not isinstance(sites, list):
        raise InternalError("the server sent a site job status that is not a list")
    return [ClientJobStatus.from_dict(s) for s in sites if isinstance(s, Mapping)]


def _object(make: Callable[[Mapping[str, Any]], R], what: str) -> Callable[[Any], R]:
    """A parse for a command whose result is one JSON object, read by ``make``."""

    def parse(reply: Any) -> Any:
        result = _command_result(reply)
        if not isinstance(result, Mapping):
            raise InternalError(f"the server sent {what} that is not a JSON object")
        return make(result)

    return parse


def get_client_job_status(
    client_names: Iterable[str] | None = None,
) -> Unary[list[ClientJobStatus]]:
    targets = _names(client_names, "client name")
    return command("get_client_job_status", {"targets": targets}, _sites_result)


def _job_command(
    name: str,
    jid: str,
    target_type: str,
    targets: Iterable[str] | None,
    parse: Callable[[Any], T],
) -> Unary[T]:
    jid = job_id(jid)
    args = {
        "job_id": jid,
        "target_type": _target_type(target_type),
        "targets": _names(targets, "target"),
    }
    return command(name, args, parse, jid)


def show_stats(
    jid: str, target_type: str, targets: Iterable[str] | None = None
) -> Unary[TargetStats]:
    parse = _object(TargetStats.from_dict, "statistics")
    return _job_command("show_stats", jid, target_type, targets, parse)


def show_errors(
    jid: str, target_type: str, targets: Iterable[str] | None = None
) -> Unary[TargetErrors]:
    parse = _object(TargetErrors.from_dict, "an error report")
    return _job_command("show_errors", jid, target_type, targets, parse)


def reset_errors(
    jid: str, target_type: str = "all", targets: Iterable[str] | None = None
) -> Unary[None]:
    return _job_command("reset_errors", jid, target_type, targets, _none)


def _file_arg(value: object, what: str) -> str:
    text = _opt_str(value, what)
    if not text:
        raise InvalidArgumentError(f"{what} is required: a path relative to the target's workspace")
    return text


def ls_target(
    target: str, options: str | None = None, path: str | None = None
) -> Unary[DirListing]:
    args = {"target": _target(target), "path": _opt_str(path, "path") or "."}
    args.update(_options(options, {"-l": "long", "-a": "all"}))
    return command("ls", args, _listing(target, args["path"]))


def cat_target(target: str, options: str | None = None, file: str | None = None) -> Unary[FileText]:
    args = {"target": _target(target), "path": _file_arg(file, "file"), **_options(options, {})}
    return command("cat", args, _file_text(target, args["path"]))


def head_target(
    target: str, options: str | None = None, file: str | None = None, *, name: str = "head"
) -> Unary[FileText]:
    args = {"target": _target(target), "path": _file_arg(file, "file")}
    args.update(_options(options, {}, numeric="lines"))
    return command(name, args, _file_text(target, args["path"]))


def tail_target(
    target: str, options: str | None = None, file: str | None = None
) -> Unary[FileText]:
    return head_target(target, options, file, name="tail")


def log_file(target: str) -> str:
    return LOG_FILES.get(_target(target), SITE_LOG_FILE)


def head_target_log(target: str, options: str | None = None) -> Unary[FileText]:
    return head_target(target, options, log_file(target))


def tail_target_log(target: str, options: str | None = None) -> Unary[FileText]:
    return tail_target(target, options, log_file(target))


def grep_target(
    target: str, options: str | None = None, pattern: str | None = None, file: str | None = None
) -> Unary[FileText]:
    if not isinstance(pattern, str) or not pattern:
        raise InvalidArgumentError(f"pattern must be a non-empty string, got {pattern!r}")
    args = {"target": _target(target), "path": _file_arg(file, "file"), "pattern": pattern}
    args.update(_options(options, {"-i": "ignore_case", "-E": "regex", "-n": "line_numbers"}))
    args.pop("line_numbers", None)  # lines are always numbered
    return command("grep", args, _file_text(target, args["path"]))


def get_working_directory(target: str) -> Unary[FileText]:
    return command("pwd", {"target": _target(target)}, _file_text(target, ""))


def system_command(
    name: str,
    target_type: str | None,
    client_names: Iterable[str] | None,
    *,
    force: bool = False,
) -> Unary[SystemCommandResult]:
    """shutdown, restart, shutdown_system; ``force`` aborts the running jobs first."""
    if not isinstance(force, bool):
        raise InvalidArgumentError(f"force must be True or False, got {force!r}")
    args: dict[str, Any] = {"targets": _names(client_names, "client name")}
    if target_type is not None:
        args["target_type"] = _target_type(target_type)
    if force:
        args["force"] = True
    return command(name, args, _object(lambda d: SystemCommandResult.from_dict(name, d), name))


# -- result readers ------------------------------------------------------------------------

#: Rows asked for per call; the server may send fewer (it keeps each reply under 4 MiB).
PAGE_ROWS = 10_000


@dataclass(frozen=True)
class Page(Generic[R]):
    """One reply of a paged command: rows, and where the next page starts (None: done)."""

    rows: list[R]
    next_offset: int | None


class Pages(Generic[R]):
    """Every row of a paged command from ``start``: the transport makes the call
    :meth:`next` gives until it gives None, passing each reply to :meth:`add`."""

    def __init__(self, make: Callable[[int], Unary[Page[R]]], start: int) -> None:
        self._make = make
        self._offset: int | None = start
        self.rows: list[R] = []

    def next(self) -> Unary[Page[R]] | None:
        return None if self._offset is None else self._make(self._offset)

    def add(self, page: Page[R]) -> None:
        self.rows.extend(page.rows)
        nxt = page.next_offset
        self._offset = (
            nxt if nxt is not None and self._offset is not None and nxt > self._offset else None
        )


def _page_of(make: Callable[[Mapping[str, Any]], R]) -> Callable[[Any], Page[R]]:
    def parse(reply: Any) -> Page[R]:
        result = _command_result(reply)
        if not isinstance(result, Mapping) or not isinstance(result.get("rows"), list):
            raise InternalError("the server sent a page without a 'rows' list")
        rows = [make(r) for r in result["rows"] if isinstance(r, Mapping)]
        nxt = result.get("next_offset")
        if isinstance(nxt, bool) or not isinstance(nxt, int):
            nxt = None
        return Page(rows, nxt)

    return parse


def _site_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SITE_NAME.match(value) or value == "server":
        raise InvalidTarget(f"site {value!r} is not a valid site name", target=repr(value))
    return value


def row_offset(value: object) -> int:
    """``start`` of the row readers: how many (matching) rows to skip, an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"start must be a row count >= 0, got {value!r}")
    return value


def job_metrics(
    jid: str, site: str | None = None, key: str | None = None, offset: int = 0
) -> Unary[Page[MetricRow]]:
    """One page of a job's metrics log, optionally only one site's or one key's rows."""
    jid = job_id(jid)
    args = {
        "job_id": jid,
        "site": _site_name(site),
        "key": _opt_str(key, "key"),
        "offset": offset,
        "limit": PAGE_ROWS,
    }
    return command("job_metrics", args, _page_of(MetricRow.from_dict), jid)


def job_validations(
    jid: str, site: str | None = None, offset: int = 0
) -> Unary[Page[ValidationRow]]:
    """One page of a job's validation results."""
    jid = job_id(jid)
    args = {"job_id": jid, "site": _site_name(site), "offset": offset, "limit": PAGE_ROWS}
    return command("job_validations", args, _page_of(ValidationRow.from_dict), jid)


def metric_pages(jid: str, site: str | None, key: str | None, start: object) -> Pages[MetricRow]:
    """Every page of ``get_job_metrics`` (arguments checked before any call)."""
    first = row_offset(start)
    job_metrics(jid, site, key)
    return Pages(lambda offset: job_metrics(jid, site, key, offset), first)


def validation_pages(jid: str, site: str | None, start: object) -> Pages[ValidationRow]:
    """Every page of ``get_validations`` (arguments checked before any call)."""
    first = row_offset(start)
    job_validations(jid, site)
    return Pages(lambda offset: job_validations(jid, site, offset), first)


def job_messages(jid: str, event: str | None = None, offset: int = 0) -> Unary[Page[MessageRow]]:
    """One page of a driver job's message log, optionally only one kind of row."""
    jid = job_id(jid)
    if event is not None and event not in ("sent", "reply", "refused"):
        raise InvalidArgumentError(
            f"event must be 'sent', 'reply', 'refused' or None, got {event!r}"
        )
    args = {"job_id": jid, "event": event, "offset": offset, "limit": PAGE_ROWS}
    return command("job_messages", args, _page_of(MessageRow.from_dict), jid)


def message_pages(jid: str, event: str | None, start: object) -> Pages[MessageRow]:
    """Every page of ``get_job_messages`` (arguments checked before any call)."""
    first = row_offset(start)
    job_messages(jid, event)
    return Pages(lambda offset: job_messages(jid, event, offset), first)


def job_summary(jid: str) -> Unary[JobRunSummary]:
    """The server's summary of a job's run (``summary.json``: workflow, rounds, participants)."""
    jid = job_id(jid)
    parse = _object(JobRunSummary.from_dict, "a job summary")
    return command("job_summary", {"job_id": jid}, parse, jid)


# -- watching a job -----------------------------------------------------------------------


def watch_timeout(value: object) -> float | None:
    """``timeout`` of ``watch_job``: None (no limit) or seconds > 0."""
    if value is None:
        return None
    seconds = timeout_value(value)
    if seconds == 0:
        raise InvalidArgumentError("timeout must be > 0 seconds, or None to wait until the end")
    return seconds


def watch_request(jid: str, metrics: object, validations: object) -> Any:
    """The WatchJobEvents request (the RPC is newer than some servers: say so clearly)."""
    for name, value in (("metrics", metrics), ("validations", validations)):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return admin_pb2.WatchRequest(
        job_id=jid, want_metrics=bool(metrics), want_validations=bool(validations)
    )


def _rows_of(text: str, make: Callable[[Mapping[str, Any]], Any], what: str) -> tuple[Any, ...]:
    rows = _json_object(text, what)
    if not isinstance(rows, list):
        raise InternalError(f"the server sent {what} that are not a JSON list")
    return tuple(make(r) for r in rows if isinstance(r, Mapping))


class WatchStep:
    """Reads a watch's events (shared sync/async): each ``JobEvent`` message as a typed
    event, remembering the last meta to know when the job finished."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.last: JobMeta | None = None

    @property
    def finished(self) -> bool:
        """The last event was the meta showing the job finished: the watch is over."""
        return self.last is not None and self.last.finished

    def event(self, reply: Any) -> JobEvent:
        kind = reply.WhichOneof("event")
        if kind == "meta_json":
            data = _json_object(reply.meta_json, "a job meta")
            if not isinstance(data, dict):
                raise InternalError("the server sent a job meta that is not a JSON object")
            data.setdefault("job_id", self.job_id)
            self.last = JobMeta.from_dict(data)
            return MetaChanged(self.last)
        if kind == "metrics_json":
            return MetricsArrived(_rows_of(reply.metrics_json, MetricRow.from_dict, "metric rows"))
        if kind == "validations_json":
            rows = _rows_of(reply.validations_json, ValidationRow.from_dict, "validation rows")
            return ValidationsArrived(rows)
        raise InternalError(
            f"the server sent an event of a kind this flare-admin does not know ({kind!r}); "
            "update flare-admin"
        )

    def timed_out(self, seconds: float) -> JobTimeout:
        status = self.last.status if self.last is not None else "unknown"
        return JobTimeout(
            f"job {self.job_id} did not finish within {seconds:g} s (status {status})",
            job_id=self.job_id,
            status=status,
        )


class Progress:
    """Calls ``progress(done, total)`` when ``done`` changed (and once at the start)."""

    def __init__(self, progress: Callable[[int, int], object] | None) -> None:
        self.progress = progress
        self.done = -1

    def __call__(self, done: int, total: int) -> None:
        if self.progress is not None and done != self.done:
            self.done = done
            self.progress(done, total)


def model_round(value: object) -> int:
    """``round`` of ``download_model``: None -> 0 (the final model), else an int >= 1."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(
            f"round must be a round number >= 1, or None for the final model; got {value!r}"
        )
    return value


def model_file_name(jid: str, round_number: int) -> str:
    """Where ``download_model`` saves into a folder: ``<job_id>.global_model.npz`` or
    ``<job_id>.round_003.npz`` (next to, never inside, a downloaded result folder)."""
    return f"{jid}.global_model.npz" if round_number == 0 else f"{jid}.round_{round_number:03d}.npz"
