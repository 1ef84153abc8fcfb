"""Every shell command, one per Session method (NVIDIA FLARE console names where they
exist) plus a few views of results. This module is the registry: dispatch, help,
completion and docs/shell.md all read :data:`REGISTRY`.

A command's function takes the :class:`~flare_admin.shell.context.ShellContext` and its
parsed arguments, calls the Session and returns a result (a Session result or a view
from :mod:`flare_admin.shell.views`); it never prints. Live commands (``monitor_job``,
``watch``) draw through :mod:`flare_admin.shell.live` and return the final meta.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flare_admin.shell.context import ShellContext
from flare_admin.shell.params import Arg, Kind, Opt, UsageError
from flare_admin.shell.registry import Registry
from flare_admin.shell.views import (
    Done,
    MessagesView,
    MetricsView,
    ParamsView,
    SessionView,
    ValidationsView,
)
from flare_protocol import errors

__all__ = ["REGISTRY"]

REGISTRY = Registry()
command = REGISTRY.command

JOB = Arg("job", Kind.JOB, "a job id, any unique prefix of one, or 'last'")
TARGET = Arg("target", Kind.TARGET, "'server' or a site name")
TARGET_TYPE = Arg(
    "target_type", Kind.TARGET_TYPE, "server, client or all", required=False, default="all"
)
SITES = Arg("sites", Kind.SITE, "site names (default: all that apply)", required=False, many=True)
LINES = Opt(("-n", "--lines"), "lines", "number of lines", Kind.INT, default=10, metavar="N")
FORCE = Opt(("--force",), "force", "abort running jobs first instead of refusing")


def _job(ctx: ShellContext, ref: str) -> str:
    return ctx.resolve_job(ref)


def _job_label(ctx: ShellContext, job_id: str) -> str:
    meta = ctx.session.get_job_meta(job_id)
    return f"job {job_id[:8]} ({meta.name}, {meta.status})"


def _names(values: list[str] | None) -> list[str] | None:
    return list(values) if values else None


# -- jobs ------------------------------------------------------------------------------


@command(
    "list_jobs",
    "list jobs, oldest first (-r: newest first)",
    args=(Arg("id_prefix", Kind.TEXT, "only ids starting with this", required=False),),
    opts=(
        Opt(("-d", "--detailed"), "detailed", "full metas instead of summary rows"),
        Opt(
            ("-n", "--name"),
            "name_prefix",
            "only names starting with this",
            Kind.TEXT,
            metavar="NAME_PREFIX",
        ),
        Opt(("-m", "--max"), "limit", "at most this many jobs", Kind.INT, metavar="MAX"),
        Opt(("-r", "--reverse"), "reverse", "newest first"),
    ),
    wraps=("list_jobs",),
)
def list_jobs(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.list_jobs(
        detailed=a["detailed"],
        limit=a["limit"],
        id_prefix=a["id_prefix"],
        name_prefix=a["name_prefix"],
        reverse=a["reverse"],
    )


@command("get_job_meta", "a job's full meta", args=(JOB,), wraps=("get_job_meta",))
def get_job_meta(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.get_job_meta(_job(ctx, a["job"]))


@command(
    "submit_job",
    "upload a job folder (or .zip) and queue it",
    args=(Arg("path", Kind.LOCAL_PATH, "the job folder or a .zip of it"),),
    opts=(
        Opt(
            ("--initial-model",),
            "initial_model",
            "start from this finished job's final model",
            Kind.JOB,
            metavar="JOB",
        ),
    ),
    wraps=("submit_job",),
)
def submit_job(ctx: ShellContext, a: dict[str, Any]) -> Done:
    source = _job(ctx, a["initial_model"]) if a["initial_model"] else None
    path = os.path.expanduser(a["path"])
    with ctx.progress(f"uploading {Path(path).name}") as progress:
        job_id = ctx.session.submit_job(path, progress=progress, initial_model_job_id=source)
    ctx.forget_cached()
    return Done(f"submitted job {job_id}", {"job_id": job_id})


@command(
    "clone_job",
    "submit a copy of a job",
    args=(JOB,),
    opts=(
        Opt(
            ("--initial-model",),
            "initial_model",
            "start from this finished job's final model",
            Kind.JOB,
            metavar="JOB",
        ),
    ),
    wraps=("clone_job",),
)
def clone_job(ctx: ShellContext, a: dict[str, Any]) -> Done:
    job_id = _job(ctx, a["job"])
    source = _job(ctx, a["initial_model"]) if a["initial_model"] else None
    new_id = ctx.session.clone_job(job_id, initial_model_job_id=source)
    ctx.forget_cached()
    return Done(
        f"submitted job {new_id}, a copy of {job_id}", {"job_id": new_id, "cloned_from": job_id}
    )


def _ask_abort(ctx: ShellContext, a: dict[str, Any]) -> str:
    a["job"] = _job(ctx, a["job"])
    return f"abort {_job_label(ctx, a['job'])}?"


@command(
    "abort_job",
    "abort a submitted or running job",
    args=(JOB,),
    confirm=_ask_abort,
    wraps=("abort_job",),
)
def abort_job(ctx: ShellContext, a: dict[str, Any]) -> Done:
    job_id = _job(ctx, a["job"])
    ctx.session.abort_job(job_id)
    ctx.forget_cached()
    return Done(f"aborted job {job_id}", {"job_id": job_id})


def _ask_delete(ctx: ShellContext, a: dict[str, Any]) -> str:
    a["job"] = _job(ctx, a["job"])
    return f"delete {_job_label(ctx, a['job'])} and its files from the server?"


@command(
    "delete_job",
    "delete a job and its files from the server",
    args=(JOB,),
    confirm=_ask_delete,
    wraps=("delete_job",),
)
def delete_job(ctx: ShellContext, a: dict[str, Any]) -> Done:
    job_id = _job(ctx, a["job"])
    ctx.session.delete_job(job_id)
    ctx.forget_cached()
    return Done(f"deleted job {job_id}", {"job_id": job_id})


@command(
    "monitor_job",
    "follow a job live until it ends (Ctrl-C stops watching, not the job)",
    args=(JOB,),
    opts=(
        Opt(
            ("-t", "--timeout"),
            "timeout",
            "stop watching after this many seconds",
            Kind.SECONDS,
            default=0.0,
            metavar="SECONDS",
        ),
    ),
    aliases=("watch",),
    wraps=("watch_job", "monitor_job"),
)
def monitor_job(ctx: ShellContext, a: dict[str, Any]) -> Any:
    from flare_admin.shell.live import follow_job

    return follow_job(
        ctx.session,
        ctx.console,
        _job(ctx, a["job"]),
        timeout=a["timeout"],
        json_output=ctx.json_output,
        interactive=ctx.interactive,
    )


@command(
    "wait_for_job",
    "wait quietly until a job ends; print its final meta",
    args=(JOB,),
    opts=(
        Opt(
            ("-t", "--timeout"),
            "timeout",
            "give up after this many seconds (0: never)",
            Kind.SECONDS,
            default=0.0,
            metavar="SECONDS",
        ),
    ),
    wraps=("wait_for_job",),
)
def wait_for_job(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.wait_for_job(_job(ctx, a["job"]), timeout=a["timeout"])


@command(
    "download_job",
    "download a finished job's result folder",
    args=(JOB,),
    opts=(
        Opt(
            ("-o", "--output"),
            "output",
            "into this folder (default: the kit's transfer/)",
            Kind.LOCAL_PATH,
            metavar="DIR",
        ),
    ),
    aliases=("download_job_result",),
    wraps=("download_job_result",),
)
def download_job(ctx: ShellContext, a: dict[str, Any]) -> Done:
    job_id = _job(ctx, a["job"])
    dest = os.path.expanduser(a["output"]) if a["output"] else None
    with ctx.progress(f"downloading job {job_id[:8]}") as progress:
        path = ctx.session.download_job_result(job_id, dest, progress=progress)
    return Done(f"downloaded job {job_id} to {path}", {"job_id": job_id, "path": path})


@command(
    "download_model",
    "download a job's final global model (or one round's) as .npz",
    args=(JOB,),
    opts=(
        Opt(
            ("--round",),
            "round",
            "that round's model instead of the final one",
            Kind.INT,
            metavar="N",
        ),
        Opt(
            ("-o", "--output"),
            "output",
            "a folder or a path ending in .npz",
            Kind.LOCAL_PATH,
            metavar="PATH",
        ),
    ),
    wraps=("download_model",),
)
def download_model(ctx: ShellContext, a: dict[str, Any]) -> Done:
    job_id = _job(ctx, a["job"])
    dest = os.path.expanduser(a["output"]) if a["output"] else None
    with ctx.progress(f"downloading model of {job_id[:8]}") as progress:
        path = ctx.session.download_model(job_id, dest, round=a["round"], progress=progress)
    return Done(f"downloaded the model to {path}", {"job_id": job_id, "path": path})


@command(
    "logs",
    "the lines of a log that mention a job (server's by default)",
    args=(
        JOB,
        Arg("target", Kind.TARGET, "'server' or a site name", required=False, default="server"),
    ),
    wraps=("get_job_logs",),
)
def logs(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.get_job_logs(_job(ctx, a["job"]), a["target"])


# -- results ---------------------------------------------------------------------------


@command(
    "metrics",
    "a job's metrics: a round x site table and a sparkline per site",
    args=(JOB,),
    opts=(
        Opt(("--site",), "site", "only this site's rows", Kind.SITE, metavar="SITE"),
        Opt(
            ("--key",),
            "key",
            "the metric to tabulate (default: the first logged)",
            Kind.TEXT,
            metavar="KEY",
        ),
    ),
    group="results",
    wraps=("get_job_metrics",),
)
def metrics(ctx: ShellContext, a: dict[str, Any]) -> MetricsView:
    job_id = _job(ctx, a["job"])
    rows = ctx.session.get_job_metrics(job_id, site=a["site"])
    if a["key"] and rows and a["key"] not in {r.key for r in rows}:
        keys = ", ".join(sorted({r.key for r in rows}))
        raise errors.InvalidArgumentError(
            f"job {job_id[:8]} logged no metric {a['key']!r}; it has: {keys}", job_id=job_id
        )
    return MetricsView(job_id, tuple(rows), a["key"], a["site"])


@command(
    "validations",
    "each site's validation of each round's global model",
    args=(JOB,),
    opts=(Opt(("--site",), "site", "only this site's rows", Kind.SITE, metavar="SITE"),),
    group="results",
    wraps=("get_validations",),
)
def validations(ctx: ShellContext, a: dict[str, Any]) -> ValidationsView:
    job_id = _job(ctx, a["job"])
    return ValidationsView(job_id, tuple(ctx.session.get_validations(job_id, site=a["site"])))


@command(
    "params",
    "the params, tags and texts a job's sites recorded (MLflowWriter, WandBWriter)",
    args=(JOB,),
    opts=(
        Opt(("--site",), "site", "only this site's rows", Kind.SITE, metavar="SITE"),
        Opt(("--kind",), "kind", "only params, tags or texts", Kind.CHOICE,
            choices=("param", "tag", "text"), metavar="KIND"),
    ),
    group="results",
    wraps=("get_job_params",),
)  # fmt: skip
def params(ctx: ShellContext, a: dict[str, Any]) -> ParamsView:
    job_id = _job(ctx, a["job"])
    rows = ctx.session.get_job_params(job_id, site=a["site"], kind=a["kind"])
    return ParamsView(job_id, tuple(rows))


@command(
    "messages",
    "a driver job's message log: each message sent, each reply, each refused reply",
    args=(JOB,),
    opts=(
        Opt(("--event",), "event", "only sent messages, replies or refused replies", Kind.CHOICE,
            choices=("sent", "reply", "refused"), metavar="EVENT"),
    ),
    group="results",
    wraps=("get_job_messages",),
)  # fmt: skip
def messages(ctx: ShellContext, a: dict[str, Any]) -> MessagesView:
    job_id = _job(ctx, a["job"])
    return MessagesView(job_id, tuple(ctx.session.get_job_messages(job_id, event=a["event"])))


@command(
    "export_metrics",
    "write a job's metrics as TensorBoard event files (or into MLflow)",
    args=(JOB, Arg("logdir", Kind.LOCAL_PATH, "the folder (or MLflow tracking URI)")),
    opts=(
        Opt(("--format",), "format", "tensorboard or mlflow", Kind.CHOICE,
            default="tensorboard", choices=("tensorboard", "mlflow"), metavar="FORMAT"),
    ),
    group="results",
    wraps=("export_metrics",),
)  # fmt: skip
def export_metrics(ctx: ShellContext, a: dict[str, Any]) -> Done:
    job_id = _job(ctx, a["job"])
    logdir = os.path.expanduser(a["logdir"])
    where = ctx.session.export_metrics(job_id, logdir, format=a["format"])
    hint = f"; view it with: tensorboard --logdir {where}" if a["format"] == "tensorboard" else ""
    return Done(
        f"exported job {job_id[:8]}'s metrics to {where}{hint}", {"job_id": job_id, "path": where}
    )


@command(
    "summary",
    "the server's summary of a job's run (rounds, participants)",
    args=(JOB,),
    group="results",
    wraps=("get_job_summary",),
)
def summary(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.get_job_summary(_job(ctx, a["job"]))


@command(
    "show_stats",
    "a job's statistics on the server and/or sites",
    args=(JOB, TARGET_TYPE, SITES),
    group="results",
    wraps=("show_stats",),
)
def show_stats(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.show_stats(_job(ctx, a["job"]), a["target_type"], _names(a["sites"]))


@command(
    "show_errors",
    "errors a job reported on the server and/or sites",
    args=(JOB, TARGET_TYPE, SITES),
    group="results",
    wraps=("show_errors",),
)
def show_errors(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.show_errors(_job(ctx, a["job"]), a["target_type"], _names(a["sites"]))


@command(
    "reset_errors",
    "forget a job's recorded errors",
    args=(JOB, TARGET_TYPE, SITES),
    group="results",
    wraps=("reset_errors",),
)
def reset_errors(ctx: ShellContext, a: dict[str, Any]) -> Done:
    job_id = _job(ctx, a["job"])
    ctx.session.reset_errors(job_id, a["target_type"], _names(a["sites"]))
    return Done(f"errors of job {job_id} reset", {"job_id": job_id})


# -- server and sites ------------------------------------------------------------------


@command(
    "check_status",
    "the server's state, or which jobs each site runs",
    args=(
        Arg("what", Kind.CHOICE, "server or client", choices=("server", "client")),
        Arg("sites", Kind.SITE, "only these sites (with client)", required=False, many=True),
    ),
    group="sites",
    wraps=("get_system_info", "get_client_job_status"),
)
def check_status(ctx: ShellContext, a: dict[str, Any]) -> Any:
    if a["what"] == "server":
        if a["sites"]:
            raise UsageError("check_status server takes no site names")
        return ctx.session.get_system_info()
    return ctx.session.get_client_job_status(_names(a["sites"]))


@command(
    "sys_info",
    "the server, its connected sites and running jobs",
    group="sites",
    wraps=("get_system_info",),
)
def sys_info(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.get_system_info()


@command(
    "list_clients", "the sites connected now", group="sites", wraps=("get_connected_client_list",)
)
def list_clients(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.get_connected_client_list()


def _system_targets(a: dict[str, Any]) -> str:
    sites = f" {', '.join(a['sites'])}" if a["sites"] else ""
    return {
        "server": "the server",
        "client": f"site(s){sites or ' (all)'}",
        "all": f"the server and site(s){sites or ' (all)'}",
    }[a["target_type"]]


SYSTEM_TARGET = Arg("target_type", Kind.TARGET_TYPE, "server, client or all")


def _ask_shutdown(ctx: ShellContext, a: dict[str, Any]) -> str:
    return f"shut down {_system_targets(a)}?"


@command(
    "shutdown",
    "stop the server, sites or all",
    args=(SYSTEM_TARGET, SITES),
    opts=(FORCE,),
    confirm=_ask_shutdown,
    group="sites",
    wraps=("shutdown",),
)
def shutdown(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.shutdown(a["target_type"], _names(a["sites"]), force=a["force"])


def _ask_shutdown_system(ctx: ShellContext, a: dict[str, Any]) -> str:
    return "shut down every site and then the server?"


@command(
    "shutdown_system",
    "stop every site and then the server",
    opts=(FORCE,),
    confirm=_ask_shutdown_system,
    group="sites",
    wraps=("shutdown_system",),
)
def shutdown_system(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.shutdown_system(force=a["force"])


def _ask_restart(ctx: ShellContext, a: dict[str, Any]) -> str:
    return f"restart {_system_targets(a)}?"


@command(
    "restart",
    "restart the server, sites or all",
    args=(SYSTEM_TARGET, SITES),
    confirm=_ask_restart,
    group="sites",
    wraps=("restart",),
)
def restart(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.restart(a["target_type"], _names(a["sites"]))


@command(
    "update_revocations",
    "send a newer signed revocation list (CRL) to the server (project_admin)",
    args=(
        Arg(
            "path",
            Kind.LOCAL_PATH,
            "the revocations.crl flare provision wrote (state/ or the server kit's startup/)",
        ),
    ),
    group="sites",
    wraps=("update_revocations",),
)
def update_revocations(ctx: ShellContext, a: dict[str, Any]) -> Done:
    update = ctx.session.update_revocations(os.path.expanduser(a["path"]))
    return Done(
        f"revocation list {update.crl_number} in force (was {update.previous_crl_number}): "
        f"{update.revoked} certificate(s) revoked, {update.streams_dropped} open stream(s) "
        "dropped",
        update.to_dict(),
    )


# -- files on a target -----------------------------------------------------------------

REMOTE = Arg("path", Kind.REMOTE_PATH, "a path in the target's workspace")


@command(
    "ls",
    "list a folder of a target's workspace",
    args=(
        TARGET,
        Arg("path", Kind.REMOTE_PATH, "a folder (default: the workspace)", required=False),
    ),
    opts=(Opt(("-l",), "long", "sizes and times"),),
    group="files",
    wraps=("ls_target",),
)
def ls(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.ls_target(a["target"], "-l" if a["long"] else None, a["path"])


@command(
    "cat",
    "print a file of a target's workspace",
    args=(TARGET, REMOTE),
    group="files",
    wraps=("cat_target",),
)
def cat(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.cat_target(a["target"], None, a["path"])


@command(
    "head",
    "the first lines of a file",
    args=(TARGET, REMOTE),
    opts=(LINES,),
    group="files",
    wraps=("head_target",),
)
def head(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.head_target(a["target"], f"-n {a['lines']}", a["path"])


@command(
    "tail",
    "the last lines of a file",
    args=(TARGET, REMOTE),
    opts=(LINES,),
    group="files",
    wraps=("tail_target",),
)
def tail(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.tail_target(a["target"], f"-n {a['lines']}", a["path"])


@command(
    "head_log",
    "the first lines of a target's log",
    args=(TARGET,),
    opts=(LINES,),
    group="files",
    wraps=("head_target_log",),
)
def head_log(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.head_target_log(a["target"], f"-n {a['lines']}")


@command(
    "tail_log",
    "the last lines of a target's log",
    args=(TARGET,),
    opts=(LINES,),
    group="files",
    wraps=("tail_target_log",),
)
def tail_log(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.tail_target_log(a["target"], f"-n {a['lines']}")


@command(
    "grep",
    "lines of a file that contain a pattern (numbered)",
    args=(TARGET, Arg("pattern", Kind.TEXT, "the text to look for"), REMOTE),
    opts=(
        Opt(("-i",), "ignore_case", "ignore case"),
        Opt(("-E",), "regex", "the pattern is a regular expression"),
    ),
    group="files",
    wraps=("grep_target",),
)
def grep(ctx: ShellContext, a: dict[str, Any]) -> Any:
    options = " ".join(flag for flag, on in (("-i", a["ignore_case"]), ("-E", a["regex"])) if on)
    return ctx.session.grep_target(a["target"], options or None, a["pattern"], a["path"])


@command(
    "pwd",
    "a target's working directory",
    args=(TARGET,),
    group="files",
    wraps=("get_working_directory",),
)
def pwd(ctx: ShellContext, a: dict[str, Any]) -> Any:
    return ctx.session.get_working_directory(a["target"])


# -- this shell ------------------------------------------------------------------------


def _session_view(ctx: ShellContext, full: bool) -> SessionView:
    info = ctx.session.info
    return SessionView(
        name=info.name,
        org=info.org,
        role=info.role,
        project=info.project,
        server=ctx.session.address,
        server_version=info.server_version,
        kit=ctx.session.startup_kit_location,
        timeout=ctx.session.timeout,
        full=full,
    )


@command(
    "whoami",
    "your name, org and role, as the server sees them",
    group="session",
    wraps=("info",),
    offline=True,
)
def whoami(ctx: ShellContext, a: dict[str, Any]) -> SessionView:
    return _session_view(ctx, full=False)


@command(
    "info", "this session: identity, project, server, kit, timeout", group="session", offline=True
)
def info(ctx: ShellContext, a: dict[str, Any]) -> SessionView:
    return _session_view(ctx, full=True)


@command(
    "lpwd",
    "this machine's working directory (where local paths start)",
    group="session",
    offline=True,
)
def lpwd(ctx: ShellContext, a: dict[str, Any]) -> Done:
    cwd = os.getcwd()
    return Done(cwd, {"path": cwd})


@command(
    "ping",
    "check the connection to the server (reconnecting if it was lost): the round trip",
    group="session",
    wraps=("ping",),
)
def ping(ctx: ShellContext, a: dict[str, Any]) -> Done:
    seconds = ctx.session.ping()
    text = f"{ctx.session.address} answered in {seconds * 1e3:.1f} ms"
    return Done(text, {"server": ctx.session.address, "seconds": seconds})


@command(
    "set_timeout",
    "the deadline of each call, in seconds",
    args=(Arg("seconds", Kind.SECONDS, "seconds (> 0)"),),
    group="session",
    wraps=("set_timeout",),
    offline=True,
)
def set_timeout(ctx: ShellContext, a: dict[str, Any]) -> Done:
    ctx.session.set_timeout(a["seconds"])
    return Done(f"calls now time out after {a['seconds']:g} s", {"timeout": a["seconds"]})


@command(
    "unset_timeout",
    "go back to the timeout the session was opened with",
    group="session",
    wraps=("unset_timeout",),
    offline=True,
)
def unset_timeout(ctx: ShellContext, a: dict[str, Any]) -> Done:
    ctx.session.unset_timeout()
    return Done("the call timeout is back to its default")


@command(
    "help",
    "list commands, or explain one",
    aliases=("?",),
    args=(Arg("command", Kind.COMMAND, "a command name", required=False),),
    group="session",
    offline=True,
)
def help_(ctx: ShellContext, a: dict[str, Any]) -> Any:
    from flare_admin.shell.reference import HelpView

    if a["command"]:
        return HelpView(REGISTRY, (REGISTRY.get(a["command"]),), detailed=True)
    return HelpView(REGISTRY, tuple(REGISTRY))


@command(
    "bye",
    "leave the shell (Ctrl-D does too)",
    aliases=("exit", "quit"),
    group="session",
    offline=True,
)
def bye(ctx: ShellContext, a: dict[str, Any]) -> None:
    ctx.stop_requested = True
    return None
