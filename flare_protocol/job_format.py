"""The job format: what a job folder (or the same folder in a zip) must look like.

Used on both sides: ``flare job validate`` and the Session check a folder before upload,
and the server checks every uploaded archive with the same code before keeping it.

Theory of operation: a job is a set of relative file paths plus a way to read them.
:func:`validate_job_files` checks ``meta.json`` against ``schemas/meta.schema.json``
(JSON Schema draft 2020-12), turns the first schema error into one line naming the file
and field, checks that every app of ``deploy_map`` has a folder, and then hands each app to
:func:`flare_protocol.app_config.validate_app` (the seam for workflow/executor configs).
:func:`validate_job_folder` feeds it from a folder on disk; the server's archive checker
feeds it from a zip after checking every entry with :func:`path_problem`.

meta.json is strict: its keys are NVIDIA FLARE's job keys (:data:`META_KEYS`). A key the
server writes into a job's meta (:data:`SERVER_OWNED_KEYS`: ``job_id``, ``status``,
``errors``, ``deployed_sites``, ``initial_model_job_id`` ...) is refused, naming the key,
so no job can pre-set what the server reports or reads; any other unknown key is refused
naming the closest known key, so a typo never falls back to a default silently.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from flare_protocol import app_config
from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.ignore_files import IgnoreRules
from flare_protocol.known_keys import unknown_keys

__all__ = [
    "APP_NAME_RE",
    "JOB_NAME_RE",
    "META_FILE",
    "META_KEYS",
    "META_MAX_BYTES",
    "SERVER_OWNED_KEYS",
    "SITE_NAME_RE",
    "JobDefinition",
    "meta_schema",
    "path_problem",
    "validate_job_files",
    "validate_job_folder",
    "validate_meta",
]

META_FILE = "meta.json"
#: meta.json larger than this is refused before it is parsed.
META_MAX_BYTES = 1024 * 1024
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
APP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SITE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ALL_SITES = "@ALL"
SERVER_TARGET = "server"
#: The keys a meta.json may hold: NVIDIA FLARE's job keys. ``custom_props``, ``scope``,
#: ``launcher_spec`` and ``job_folder_name`` are kept in the job's meta but change nothing here.
META_KEYS = frozenset(
    {
        "name",
        "deploy_map",
        "min_clients",
        "mandatory_clients",
        "resource_spec",
        "custom_props",
        "scope",
        "launcher_spec",
        "job_folder_name",
    }
)
#: Every key the server writes into a job's meta. A meta.json holding one is refused; the
#: job store writes no other key (:meth:`flare_server.jobs.JobStore.update` refuses them).
SERVER_OWNED_KEYS = frozenset(
    {
        # written once, at submission
        "job_id",
        "submitter_name",
        "submitter_org",
        "submitter_role",
        "submit_time",
        "submit_time_iso",
        "cloned_from",
        "archive_size",
        "archive_sha256",
        # set from an authorized submit_job/clone_job argument, checked again when read
        "initial_model_job_id",
        # the lifecycle
        "status",
        "status_history",
        "start_time",
        "end_time",
        "duration",
        # the scheduler and the job runner
        "schedule_history",
        "schedule_reason",
        "deployed_sites",
        "current_round",
        "num_rounds",
        "rounds_completed",
        "errors",
        # server restarts a running job went through (docs/jobs.md, "Server restarts")
        "interruptions",
    }
)
_MAX_PATH_CHARS = 1024


@dataclass(frozen=True)
class JobDefinition:
    """A validated job: its meta.json (defaults applied) and its apps."""

    meta: dict[str, Any]
    #: App names from deploy_map, in meta.json order.
    apps: tuple[str, ...]
    #: Number of files in the job (directories not counted).
    entries: int = 0
    #: Sum of the files' sizes in bytes.
    uncompressed_bytes: int = 0
    #: Relative file paths of the job, sorted.
    files: tuple[str, ...] = field(default=(), repr=False)


def path_problem(name: str) -> str | None:
    """Why ``name`` is not a safe relative path inside a job, or None if it is.

    Refused: empty names and components, ``.`` and ``..`` components, absolute paths,
    drive letters, backslashes, NUL and other control characters, names over 1024 characters.
    A trailing ``/`` (a directory entry) is allowed.
    """
    if not name:
        return "an empty name"
    if len(name) > _MAX_PATH_CHARS:
        return f"a name longer than {_MAX_PATH_CHARS} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "a NUL or control character in its name"
    if "\\" in name:
        return "a backslash in its name (use '/')"
    if name.startswith("/"):
        return "an absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "a drive letter"
    parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
    for part in parts:
        if part == "..":
            return "a '..' component"
        if part in ("", "."):
            return "an empty or '.' component"
    return None


@lru_cache(maxsize=1)
def meta_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of meta.json, as published in ``flare_protocol/schemas``."""
    text = resources.files("flare_protocol").joinpath("schemas/meta.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = meta_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _field_name(path: Collection[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _schema_error_line(error: Any, source: str) -> str:
    path = list(error.absolute_path)
    expect = error.schema.get("x-expect") if isinstance(error.schema, dict) else None
    if error.validator == "required":
        missing = next((name for name in error.validator_value if name not in error.instance), "?")
        return f"{source}: field {_field_name([*path, missing])!r} is required"
    if "propertyNames" in error.absolute_schema_path:
        # jsonschema reports a bad key at its parent's path; the instance is the key itself.
        return (
            f"{source}: field {_field_name(path)!r} has key {_show(error.instance)}; "
            f"keys must be {expect or 'valid names'}"
        )
    if not path:
        return f"{source}: must be {expect or 'a JSON object'}, got {_show(error.instance)}"
    if expect is None:
        return f"{source}: field {_field_name(path)!r}: {error.message}"
    return f"{source}: field {_field_name(path)!r} must be {expect}, got {_show(error.instance)}"


def _check_keys(data: dict[str, Any], source: str) -> None:
    owned = [key for key in data if key in SERVER_OWNED_KEYS]
    if owned:
        raise InvalidJobDefinition(
            f"{source}: key {owned[0]!r} is set by the server, not by a job; remove it"
            + (
                " (to start from another job's model, pass initial_model_job_id to "
                "submit_job or clone_job)"
                if owned[0] == "initial_model_job_id"
                else ""
            ),
            path=source,
            key=owned[0],
        )
    unknown = unknown_keys(data, META_KEYS)
    if unknown:
        raise InvalidJobDefinition(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(META_KEYS))}",
            path=source,
        )


def validate_meta(data: object, *, source: str = META_FILE) -> dict[str, Any]:
    """Check a parsed meta.json against the schema; return a copy with defaults applied.

    Defaults: ``min_clients`` 1, ``resource_spec`` {}, ``mandatory_clients`` [].
    Raises:
        InvalidJobDefinition: one line naming ``source`` and the field at fault (a key
            the server owns, an unknown key with the closest known one, a bad value).
    """
    if isinstance(data, dict):
        _check_keys(data, source)
    validator = _validator()
    errors = list(validator.iter_errors(data))
    if errors:
        from jsonschema.exceptions import best_match

        error = best_match(errors)
        raise InvalidJobDefinition(_schema_error_line(error, source), path=source)
    assert isinstance(data, dict)  # guaranteed by the schema's "type": "object"
    meta = dict(data)
    meta["min_clients"] = int(meta.get("min_clients", 1))
    meta.setdefault("resource_spec", {})
    meta.setdefault("mandatory_clients", [])
    deploy_map: dict[str, list[str]] = meta["deploy_map"]
    sites = {t for targets in deploy_map.values() for t in targets} - {SERVER_TARGET, ALL_SITES}
    has_all = any(ALL_SITES in targets for targets in deploy_map.values())
    if not has_all and meta["min_clients"] > len(sites):
        raise InvalidJobDefinition(
            f"{source}: field 'min_clients' is {meta['min_clients']} but deploy_map names only "
            f"{len(sites)} site(s) ({', '.join(sorted(sites)) or 'none'}); lower min_clients or "
            'deploy to more sites or to "@ALL"',
            path=source,
        )
    return meta


def _parse_meta_bytes(raw: bytes | None, source: str) -> object:
    if raw is None:
        raise InvalidJobDefinition(
            f"{source}: missing; a job folder needs a meta.json at its root", path=source
        )
    if len(raw) > META_MAX_BYTES:
        raise InvalidJobDefinition(
            f"{source}: {len(raw)} bytes is larger than the {META_MAX_BYTES} allowed", path=source
        )

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InvalidJobDefinition(f"{source}: duplicate key {key!r}", path=source)
            out[key] = value
        return out

    def no_constant(name: str) -> Any:
        raise InvalidJobDefinition(f"{source}: {name} is not valid JSON", path=source)

    try:
        text = raw.decode("utf-8-sig")
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except InvalidJobDefinition:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidJobDefinition(
            f"{source}: not UTF-8 text ({exc.reason})", path=source
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidJobDefinition(
            f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            path=source,
        ) from None
    except RecursionError:
        raise InvalidJobDefinition(f"{source}: nested too deeply", path=source) from None
    except ValueError as exc:  # a number of more digits than Python converts
        raise InvalidJobDefinition(f"{source}: not valid JSON: {exc}", path=source) from None


def validate_job_files(
    names: Collection[str], read: Callable[[str], bytes | None]
) -> JobDefinition:
    """Validate a job given its relative file paths and a reader.

    Args:
        names: the job's files, relative to the job root, '/'-separated, already path-checked.
        read: ``read(relpath)`` returns the file's bytes (only called for names in ``names``).
    Returns:
        The :class:`JobDefinition` (``entries`` = number of names, ``uncompressed_bytes`` 0:
        callers that know sizes fill it in).
    Raises:
        InvalidJobDefinition: naming the file and field at fault.
    """
    nameset = frozenset(names)
    for name in nameset:
        problem = path_problem(name)
        if problem:
            raise InvalidJobDefinition(f"job file {name!r} has {problem}", path=name)
    raw = read(META_FILE) if META_FILE in nameset else None
    meta = validate_meta(_parse_meta_bytes(raw, META_FILE), source=META_FILE)
    deploy_map: dict[str, list[str]] = meta["deploy_map"]
    for app in deploy_map:
        prefix = app + "/"
        if not any(name.startswith(prefix) for name in nameset):
            raise InvalidJobDefinition(
                f"{META_FILE}: field 'deploy_map' names app {app!r} but the job has no folder "
                f"'{app}/' with files in it",
                path=META_FILE,
            )
    for app, targets in deploy_map.items():
        prefix = app + "/"

        def read_app(relpath: str, _prefix: str = prefix) -> bytes | None:
            full = _prefix + relpath
            if path_problem(relpath) or full not in nameset:
                return None
            return read(full)

        app_config.validate_app(
            app,
            read_app,
            deployed_to_server=SERVER_TARGET in targets or ALL_SITES in targets,
            deployed_to_sites=any(t != SERVER_TARGET for t in targets),
        )
    return JobDefinition(
        meta=meta, apps=tuple(deploy_map), entries=len(nameset), files=tuple(sorted(nameset))
    )


def validate_job_folder(path: Path) -> JobDefinition:
    """Validate a job folder on disk (what ``flare job validate PATH`` and the Session run).

    Files the folder's ignore files leave out (:mod:`flare_protocol.ignore_files`) are not
    part of the job and are not looked at. Symlinks to files inside the folder are read
    through; a symlink that leaves the folder, a symlinked directory, and devices, FIFOs
    or sockets are refused.
    Raises:
        InvalidJobDefinition: naming the file at fault.
    """
    root = Path(path)
    if not root.is_dir():
        raise InvalidJobDefinition(f"{root}: not a folder; pass a job folder", path=str(root))
    real_root = os.path.realpath(root)
    files: dict[str, Path] = {}
    total = 0
    ignore = IgnoreRules(root)  # what the ignore files leave out is not part of the job
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        ignore.prune(dirpath, dirnames, filenames)
        for dirname in dirnames:
            full = Path(dirpath, dirname)
            if full.is_symlink():
                rel = full.relative_to(root).as_posix()
                raise InvalidJobDefinition(
                    f"{root}: {rel!r} is a symlinked directory; replace it with a real folder",
                    path=rel,
                )
        for filename in filenames:
            full = Path(dirpath, filename)
            rel = full.relative_to(root).as_posix()
            problem = path_problem(rel)
            if problem:
                raise InvalidJobDefinition(f"{root}: file {rel!r} has {problem}", path=rel)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    raise InvalidJobDefinition(
                        f"{root}: {rel!r} is a symlink that leaves the job folder (to {target})",
                        path=rel,
                    )
                st = os.stat(full)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidJobDefinition(
                    f"{root}: {rel!r} is not a regular file"
                    " (device, FIFO, socket or dangling link)",
                    path=rel,
                )
            files[rel] = full
            total += st.st_size

    def read(relpath: str) -> bytes | None:
        target = files.get(relpath)
        return target.read_bytes() if target is not None else None

    definition = validate_job_files(files.keys(), read)
    return JobDefinition(
        meta=definition.meta,
        apps=definition.apps,
        entries=definition.entries,
        uncompressed_bytes=total,
        files=definition.files,
    )
