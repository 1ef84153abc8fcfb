"""The named commands of the Admin ``Command`` RPC: ``command`` + JSON args -> JSON result.

Every command checks its right (see :mod:`flare_server.authz`) on the resource it touches.
Arguments (a JSON object) and results by command:

======================  ================  ==========================================
command                 right             args -> result
======================  ================  ==========================================
show_stats              view              ``{job_id?, target_type?, targets?}`` ->
                                          ``{"server": {...}, "<site>": {...}}``
show_errors             view; download_   ``{job_id?, target_type?, targets?}`` ->
                        job (job)         ``{"server": [...], "<site>": [...]}``
reset_errors            manage_job (job)  ``{job_id, target_type?, targets?}`` ->
                                          ``{"reset": true}``
get_client_job_status   view              ``{targets?}`` ->
                                          ``{"sites": [{name, running_jobs}]}``
ls                      shell_commands    ``{target, path=".", long=false}`` ->
                                          ``{"entries": [{name, type, size, mtime}], "text",
                                          "truncated"}``
cat                     shell_commands    ``{target, path}`` -> ``{"text", "truncated"}``
head / tail             shell_commands    ``{target, path, lines=10}`` ->
                                          ``{"text", "truncated"}``
grep                    shell_commands    ``{target, path, pattern, ignore_case=false,
                                          regex=false}`` -> ``{"text", "truncated"}``
pwd                     shell_commands    ``{target}`` -> ``{"text": workspace path}``
shutdown / restart      operate           ``{target_type: server|client|all, targets?,
                                          force=false}`` -> ``{"<site>": ..., "server":
                                          "stopping", "aborted_jobs"?: [ids]}``
shutdown_system         operate (server)  ``{force=false}`` -> ``{"server": "stopping",
                                          "sites", "aborted_jobs"}``
job_metrics             download_job      ``{job_id, site?, key?, offset=0, limit=10000}`` ->
                                          ``{"rows": [{site, round, key, value, step,
                                          time}], "next_offset": int | null}``
job_params              download_job      ``{job_id, site?, kind?, key?, offset=0,
                                          limit=10000}`` -> ``{"rows": [{site, round, kind,
                                          key, value, step, time}], "next_offset"}``
job_validations         download_job      ``{job_id, site?, offset=0, limit=10000}`` ->
                                          ``{"rows": [{site, round, metrics}],
                                          "next_offset": int | null}``
job_messages            download_job      ``{job_id, event?, offset=0, limit=10000}`` ->
                                          ``{"rows": [{time, event, message_id, reply_to?,
                                          message_type, group_id, src, dst, bytes,
                                          latency?, error?}], "next_offset"}``: a driver
                                          job's message log (docs/driver.md)
job_summary             download_job      ``{job_id}`` -> the job's ``summary.json``
job_logs                download_job      ``{job_id, target="server"}`` -> ``{"text",
                                          "truncated"}``: the lines of the target's log
                                          (``logs/server.log``, ``logs/site.log``)
                                          naming the job, numbered
======================  ================  ==========================================

A job-scoped read follows the job's rights: what user code wrote (its logs, errors,
metrics, validations, summary) needs ``download_job`` on the job, as downloading its
result does; its status (``show_stats``) needs ``view``.

``target_type`` is ``server`` (the default), ``client`` or ``all``; without ``targets``,
``client``/``all`` ask the connected sites the job was deployed to (every connected site
when no job is named). ``target`` is ``"server"`` or a site name. On the server, file
commands are confined to the server workspace: paths are relative, never ``..``, absolute
or with backslashes, resolved (symlinks included) and checked to stay inside; private keys
are never shown. Commands aimed at a site are forwarded over its Channel as
``site.command`` and answered by ``site.reply``; a site that is not connected is an
``InvalidTarget``, one that does not answer in time a ``NoReply``. Anything else is an
``InvalidArgumentError`` naming the command.

``shutdown``/``restart`` authorize every target (each site, the server) and check the
server's jobs before any target acts: a refused ``all`` leaves the sites alone. Stopping
the server (or the system) while jobs are dispatched or running is ``ClientsStillRunning``
naming them; ``force=true`` aborts them first (``FINISHED:ABORTED``, the reason naming
who and why), then stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_protocol import errors
from flare_protocol.site_topics import SiteCommand
from flare_protocol.workspace_files import run_file_command
from flare_server.authz import Policy, Resource, Right
from flare_server.calls import Call
from flare_server.jobs import JobRepository, JobStatus, JobSummary
from flare_server.parts import RunControl, StopControl
from flare_server.sites import SiteRegistry

MAX_ARGS_BYTES = 64 * 1024
#: Each target's own log, relative to its workspace.
SERVER_LOG = "logs/server.log"
SITE_LOG = "logs/site.log"

Handler = Callable[[Call, dict[str, Any]], Awaitable[Any]]


def _str_arg(args: dict[str, Any], key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise errors.InvalidArgumentError(f"argument '{key}' must be a string, got {value!r}")
    return value


def _int_arg(args: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise errors.InvalidArgumentError(
            f"argument '{key}' must be an integer {lo}..{hi}, got {value!r}"
        )
    return value


def _bool_arg(args: dict[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise errors.InvalidArgumentError(f"argument '{key}' must be true or false, got {value!r}")
    return value


def _targets(args: dict[str, Any]) -> list[str] | None:
    targets = args.get("targets")
    if targets is None:
        return None
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise errors.InvalidArgumentError("argument 'targets' must be a list of site names")
    return targets


@dataclass(frozen=True)
class CommandContext:
    """What the commands use of the server."""

    store: JobRepository
    registry: SiteRegistry
    policy: Policy
    runs: RunControl
    """Running jobs (a forced stop aborts them)."""
    server: StopControl
    """``shutdown``/``restart`` of the server itself."""
    workspace: Path
    """The server workspace: file commands are confined to it."""
    errors: Collection[dict[str, Any]]
    """The server's recent errors (``show_errors``)."""
    start_time: float
    site_command_timeout: float


class Commands:
    """Dispatches the Command RPC to one handler per name."""

    def __init__(self, context: CommandContext) -> None:
        self.context = context
        self.store = context.store
        self.registry = context.registry
        self.policy = context.policy
        self._table: dict[str, Handler] = {
            "show_stats": self.show_stats,
            "show_errors": self.show_errors,
            "reset_errors": self.reset_errors,
            "get_client_job_status": self.get_client_job_status,
            "ls": self._file_command("ls"),
            "cat": self._file_command("cat"),
            "head": self._file_command("head"),
            "tail": self._file_command("tail"),
            "grep": self._file_command("grep"),
            "pwd": self._file_command("pwd"),
            "shutdown": self._control("shutdown"),
            "restart": self._control("restart"),
            "shutdown_system": self.shutdown_system,
            "job_metrics": self.job_metrics,
            "job_params": self.job_params,
            "job_messages": self.job_messages,
            "job_validations": self.job_validations,
            "job_summary": self.job_summary,
            "job_logs": self.job_logs,
        }

    @property
    def names(self) -> list[str]:
        return sorted(self._table)

    async def run(self, call: Call, name: str, args_json: str) -> Any:
        call.command = name or "command"
        if len(args_json) > MAX_ARGS_BYTES:
            raise errors.InvalidArgumentError(
                f"arguments of {name!r} exceed {MAX_ARGS_BYTES} bytes"
            )
        try:
            args = json.loads(args_json) if args_json else {}
        except (ValueError, RecursionError) as exc:  # also: too many digits, nested too deeply
            raise errors.InvalidArgumentError(
                f"arguments of {name!r} are not JSON: {exc}"
            ) from None
        if not isinstance(args, dict):
            raise errors.InvalidArgumentError(f"arguments of {name!r} must be a JSON object")
        call.args = {k: v for k, v in args.items() if k != "content"}
        if isinstance(args.get("job_id"), str):
            call.job_id = args["job_id"]
        handler = self._table.get(name)
        if handler is None:
            raise errors.InvalidArgumentError(
                f"unknown command {name!r}; known: {', '.join(self.names)}", command=name
            )
        return await handler(call, args)

    # -- helpers -----------------------------------------------------------------------
    async def _job_meta(self, job_id: str) -> dict[str, Any]:
        meta = await asyncio.to_thread(self.store.get, job_id)
        return dict(meta)  # read-only: a shallow copy is enough

    def _site_resource(self, name: str) -> Resource:
        site = self.registry.get(name)
        if site is None:
            raise errors.InvalidTarget(f"site {name!r} is not connected", site=name)
        return Resource.site(name, site.org)

    def _connected(self, name: str) -> None:
        if name not in self.registry:
            raise errors.InvalidTarget(f"site {name!r} is not connected", site=name)

    async def _forward(self, site: str, command: str, args: dict[str, Any]) -> Any:
        self._connected(site)
        reply = await self.registry.request(
            site, SiteCommand(command, args), timeout=self.context.site_command_timeout
        )
        error = reply.error
        if error:
            cls = errors.WIRE_ERRORS.get(str(error.get("type")), errors.InternalError)
            raise cls(f"site {site}: {error.get('message', 'failed')}", site=site)
        return reply.result

    # -- view --------------------------------------------------------------------------
    def _scope(self, args: dict[str, Any], meta: dict[str, Any] | None) -> tuple[bool, list[str]]:
        """(include the server?, sites to ask) from ``target_type`` and ``targets``.

        Without ``targets``, "client"/"all" means the sites the job was deployed to that are
        connected (every connected site when no job is named).
        """
        target_type = _str_arg(args, "target_type", "server")
        if target_type not in ("server", "client", "all"):
            raise errors.InvalidTarget(
                f"target_type must be server, client or all, got {target_type!r}"
            )
        targets = _targets(args)
        if targets is None and target_type != "server":
            if meta is None:
                targets = self.registry.names()
            else:
                deployed = meta.get("deployed_sites") or []
                targets = [s for s in deployed if s in self.registry]
        return target_type in ("server", "all"), list(targets or [])

    async def _job_or_view(
        self, call: Call, args: dict[str, Any], right: Right, action: str
    ) -> dict[str, Any] | None:
        if args.get("job_id") is None:
            self.policy.require(call.identity, right, action=action)
            return None
        job_id = _str_arg(args, "job_id")
        meta = await self._job_meta(job_id)
        self.policy.require(call.identity, right, _job(meta), action=f"{action} of", job_id=job_id)
        return meta

    async def show_stats(self, call: Call, args: dict[str, Any]) -> Any:
        meta = await self._job_or_view(call, args, Right.VIEW, "view the stats")
        with_server, sites = self._scope(args, meta)
        stats: dict[str, Any] = {}
        if with_server and meta is not None:
            keys = (
                "status",
                "submit_time",
                "start_time",
                "duration",
                "schedule_reason",
                "deployed_sites",
                "current_round",
                "rounds_completed",
            )
            stats["server"] = {k: meta.get(k) for k in keys if k in meta}
        elif with_server:
            counts: dict[str, int] = {}
            for row in await asyncio.to_thread(self.store.list):
                key = row.status.value
                counts[key] = counts.get(key, 0) + 1
            stats["server"] = {
                "uptime": time.time() - self.context.start_time,
                "jobs": counts,
                "connected_sites": len(self.registry),
            }
        job_id = meta["job_id"] if meta else None
        for site in sites:
            stats[site] = await self._forward(site, "show_stats", {"job_id": job_id})
        return stats

    async def show_errors(self, call: Call, args: dict[str, Any]) -> Any:
        # A job's errors carry what its user code wrote to stderr: the right of its logs.
        right = Right.VIEW if args.get("job_id") is None else Right.DOWNLOAD_JOB
        meta = await self._job_or_view(call, args, right, "view the errors")
        with_server, sites = self._scope(args, meta)
        result: dict[str, Any] = {}
        if with_server:
            result["server"] = list(
                (meta.get("errors") or []) if meta is not None else self.context.errors
            )
        job_id = meta["job_id"] if meta else None
        for site in sites:
            result[site] = await self._forward(site, "show_errors", {"job_id": job_id})
        return result

    async def reset_errors(self, call: Call, args: dict[str, Any]) -> Any:
        if args.get("job_id") is None:
            raise errors.InvalidArgumentError("reset_errors needs a job_id")
        meta = await self._job_or_view(call, args, Right.MANAGE_JOB, "reset the errors")
        assert meta is not None
        with_server, sites = self._scope(args, meta)
        if with_server and meta.get("errors"):
            await asyncio.to_thread(self.store.update, meta["job_id"], errors=[])
        for site in sites:
            await self._forward(site, "reset_errors", {"job_id": meta["job_id"]})
        return {"reset": True}

    async def get_client_job_status(self, call: Call, args: dict[str, Any]) -> Any:
        self.policy.require(call.identity, Right.VIEW, action="view site job status")
        wanted = _targets(args)
        sites = self.registry.snapshots()
        if wanted is not None:
            unknown = [t for t in wanted if t not in {s.name for s in sites}]
            if unknown:
                raise errors.InvalidTarget(f"not connected: {', '.join(unknown)}", site=unknown[0])
            sites = [s for s in sites if s.name in wanted]
        return {"sites": [{"name": s.name, "running_jobs": list(s.running_jobs)} for s in sites]}

    # -- job results (flare_server.results) --------------------------------------------
    async def _result_job(self, call: Call, args: dict[str, Any], what: str) -> dict[str, Any]:
        job_id = _str_arg(args, "job_id")
        meta = await self._job_meta(job_id)
        self.policy.require(
            call.identity,
            Right.DOWNLOAD_JOB,
            _job(meta),
            action=f"read the {what} of",
            job_id=job_id,
        )
        return meta

    async def _rows(
        self, meta: dict[str, Any], args: dict[str, Any], file: str, keys: tuple[str, ...]
    ) -> Any:
        from flare_server.results import read_rows

        where: dict[str, Any] = {}
        for key in keys:
            value = args.get(key)
            if value is not None:
                where[key] = _str_arg(args, key)
        offset = _int_arg(args, "offset", 0, 0, 2**53)
        limit = _int_arg(args, "limit", 10_000, 1, 10_000)
        folder = await asyncio.to_thread(self.store.result_dir, meta["job_id"])
        rows, nxt = await asyncio.to_thread(
            read_rows, Path(folder) / file, offset=offset, limit=limit, where=where
        )
        return {"rows": rows, "next_offset": nxt}

    async def job_metrics(self, call: Call, args: dict[str, Any]) -> Any:
        meta = await self._result_job(call, args, "metrics")
        return await self._rows(meta, args, "metrics.jsonl", ("site", "key"))

    async def job_params(self, call: Call, args: dict[str, Any]) -> Any:
        meta = await self._result_job(call, args, "params")
        return await self._rows(meta, args, "params.jsonl", ("site", "kind", "key"))

    async def job_validations(self, call: Call, args: dict[str, Any]) -> Any:
        meta = await self._result_job(call, args, "validations")
        return await self._rows(meta, args, "validations.jsonl", ("site",))

    async def job_messages(self, call: Call, args: dict[str, Any]) -> Any:
        meta = await self._result_job(call, args, "messages")
        return await self._rows(meta, args, "messages.jsonl", ("event",))

    async def job_summary(self, call: Call, args: dict[str, Any]) -> Any:
        meta = await self._result_job(call, args, "summary")
        folder = await asyncio.to_thread(self.store.result_dir, meta["job_id"])
        path = Path(folder) / "summary.json"
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            status = str(meta.get("status"))
            raise errors.JobNotDone(
                f"job {meta['job_id']} has no summary yet: it is {status}",
                job_id=str(meta["job_id"]),
                status=status,
            ) from None
        return json.loads(text)

    async def job_logs(self, call: Call, args: dict[str, Any]) -> Any:
        meta = await self._result_job(call, args, "logs")
        target = _str_arg(args, "target", "server")
        grep = {"path": SITE_LOG, "pattern": str(meta["job_id"])}
        if target == "server":
            return await asyncio.to_thread(
                self._server_file_command, "grep", {**grep, "path": SERVER_LOG}
            )
        return await self._forward(target, "grep", grep)

    # -- shell commands ----------------------------------------------------------------
    def _file_command(self, name: str) -> Handler:
        async def handler(call: Call, args: dict[str, Any]) -> Any:
            target = _str_arg(args, "target", "server")
            resource = Resource.server() if target == "server" else self._site_resource(target)
            self.policy.require(
                call.identity, Right.SHELL_COMMANDS, resource, action=f"run {name} on"
            )
            if target != "server":
                return await self._forward(target, name, args)
            return await asyncio.to_thread(self._server_file_command, name, args)

        return handler

    def _server_file_command(self, name: str, args: dict[str, Any]) -> Any:
        return run_file_command(self.context.workspace, name, args)

    # -- operate -----------------------------------------------------------------------
    def _control(self, name: str) -> Handler:
        verb, done = ("restart", "restarted") if name == "restart" else ("shut down", "shut down")

        async def handler(call: Call, args: dict[str, Any]) -> Any:
            target_type = _str_arg(args, "target_type", "server")
            if target_type not in ("server", "client", "all"):
                raise errors.InvalidTarget(
                    f"target_type must be server, client or all, got {target_type!r}"
                )
            force = _bool_arg(args, "force")
            sites: list[str] = []
            if target_type in ("client", "all"):
                named = _targets(args)
                sites = self.registry.names() if named is None else named
            with_server = target_type in ("server", "all")
            # Every part is authorized, and the server's jobs checked, before any part acts:
            # a refused "all" must not have restarted or stopped the sites already.
            for site in sites:
                self.policy.require(
                    call.identity, Right.OPERATE, self._site_resource(site), action=name
                )
            running: list[Any] = []
            if with_server:
                self.policy.require(call.identity, Right.OPERATE, Resource.server(), action=name)
                running = await self._refuse_running_jobs(verb, "the server", force)
            result: dict[str, Any] = {}
            aborted = await self._abort_for_stop(call, running, f"the server was {done}")
            for site in sites:
                result[site] = await self._forward(site, name, {})
            if aborted:
                result["aborted_jobs"] = aborted
            if with_server:
                self.context.server.request_stop(restart=(name == "restart"), by=call.identity.name)
                result["server"] = "restarting" if name == "restart" else "stopping"
            return result

        return handler

    async def shutdown_system(self, call: Call, args: dict[str, Any]) -> Any:
        self.policy.require(
            call.identity, Right.OPERATE, Resource.server(), action="shut down the system"
        )
        force = _bool_arg(args, "force")
        running = await self._refuse_running_jobs("shut down", "the system", force)
        aborted = await self._abort_for_stop(call, running, "the system was shut down")
        sites = self.registry.names()
        for site in sites:
            self.registry.send_command(site, "shutdown")
        self.context.server.request_stop(restart=False, by=call.identity.name)
        return {"server": "stopping", "sites": sites, "aborted_jobs": aborted}

    async def _refuse_running_jobs(self, verb: str, what: str, force: bool) -> list[Any]:
        """The dispatched and running jobs; ClientsStillRunning if there are any, unless
        ``force``."""
        running = await asyncio.to_thread(
            self.store.list, statuses=[JobStatus.DISPATCHED, JobStatus.RUNNING]
        )
        if running and not force:
            shown = ", ".join(f"{r.job_id} ({_status(r)})" for r in running[:10])
            more = f" and {len(running) - 10} more" if len(running) > 10 else ""
            raise errors.ClientsStillRunning(
                f"cannot {verb} {what}: {len(running)} job(s) still dispatched or running: "
                f"{shown}{more}; abort them first, or pass force=True to abort them and {verb}",
                job_ids=",".join(r.job_id for r in running),
            )
        return list(running)

    async def _abort_for_stop(self, call: Call, running: list[Any], why: str) -> list[str]:
        """Abort the jobs a forced stop ends (FINISHED:ABORTED, naming who and why)."""
        reason = f"aborted by {call.identity.name}: {why} with force=True"
        aborted: list[str] = []
        for row in running:
            try:
                meta = await asyncio.to_thread(
                    self.store.set_status,
                    row.job_id,
                    JobStatus.FINISHED_ABORTED,
                    reason=reason,
                )
            except (errors.InvalidTransition, errors.JobNotFound):
                continue  # it ended meanwhile
            self.context.runs.notify_abort(meta, reason)
            aborted.append(row.job_id)
        return aborted


def _status(row: JobSummary) -> str:
    return row.status.value


def _job(meta: dict[str, Any]) -> Resource:
    return Resource.job(
        str(meta.get("job_id")), str(meta.get("submitter_name")), str(meta.get("submitter_org"))
    )
