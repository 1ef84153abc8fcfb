"""A job app's configs: the server workflow and the site executor.

An app folder holds ``config/config_fed_server.json`` (when deployed to the server) and,
when deployed to sites, either ``config/config_fed_client.json`` or a Scaleout compute
package's ``scaleout.yaml`` (:mod:`flare_protocol.compute_package`; never both), plus user
code. The JSON files are checked against the JSON Schemas in ``flare_protocol/schemas/``
(published in docs/jobs.md), then by rules a schema cannot express (files that must exist,
placeholders each entry point needs); ``scaleout.yaml`` gets the same strictness. Every
failure is one :class:`InvalidJobDefinition` line naming the app, the file and the field.
Parsing returns frozen dataclasses that the server workflow and the site executors
consume, so neither re-reads raw files. :func:`load_site_config` is the one place that
decides which file an app's site config is in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from flare_protocol.errors import InvalidJobDefinition, InvalidModel

if TYPE_CHECKING:
    from flare_protocol.compute_package import PackageExecutorConfig

__all__ = [
    "CLIENT_CONFIG",
    "SERVER_CONFIG",
    "CommandExecutorConfig",
    "ClientConfig",
    "DriverConfig",
    "FedOptConfig",
    "ScriptExecutorConfig",
    "ServerConfig",
    "check_relpath",
    "client_config_json",
    "client_config_schema",
    "folder_reader",
    "load_site_config",
    "parse_client_config",
    "parse_server_config",
    "server_config_schema",
    "substitute_argv",
    "validate_app",
]

SERVER_CONFIG = "config/config_fed_server.json"
CLIENT_CONFIG = "config/config_fed_client.json"
DEFAULT_ROUND_TIMEOUT = 600.0
DEFAULT_LAUNCH_TIMEOUT = 60.0

#: Placeholders each command entry point may use, and those it must use.
COMMAND_PLACEHOLDERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "startup": (frozenset({"python", "app_dir"}), frozenset()),
    "train": (
        frozenset({"python", "app_dir", "model_in", "model_out", "metadata_out"}),
        frozenset({"model_out", "metadata_out"}),
    ),
    "validate": (
        frozenset({"python", "app_dir", "model_in", "metrics_out"}),
        frozenset({"metrics_out"}),
    ),
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class FedOptConfig:
    """Server optimiser of the FedOpt workflow (Reddi et al., "Adaptive Federated Optimization")."""

    serveropt: Literal["adam", "yogi", "adagrad"] = "adam"
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-4


#: Keys only the driver workflow takes, and those only the built-in ones take.
DRIVER_KEYS = ("driver_idle_timeout", "default_ttl", "max_message_bytes", "run_config")
ROUND_KEYS = (
    "num_rounds",
    "min_responses",
    "round_timeout",
    "initial_model",
    "validate_every_round",
    "fedopt",
)
DEFAULT_TTL = 3600.0
DEFAULT_MAX_MESSAGE_BYTES = 1024**3


@dataclass(frozen=True)
class DriverConfig:
    """The driver workflow's settings (docs/driver.md): the server relays the messages of
    the job's driver, an admin, to its sites; it runs no rounds itself."""

    #: Seconds without the driver before the job ends; None: the server's setting.
    idle_timeout: float | None = None
    #: TTL of a message created without one.
    default_ttl: float = DEFAULT_TTL
    #: Largest ``.npz`` of one message, either way (capped by the server's max_blob_bytes).
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Given to the ServerApp as ``context.run_config``.
    run_config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerConfig:
    """``config_fed_server.json``: which workflow, how many rounds, how tolerant."""

    workflow: Literal["fedavg", "fedopt", "driver"]
    #: 0 for the driver workflow (its driver decides).
    num_rounds: int
    #: None: every site the job starts with must answer each round.
    min_responses: int | None = None
    round_timeout: float = DEFAULT_ROUND_TIMEOUT
    #: Path of an ``.npz`` inside the app folder, or None (round 1 sends an empty model).
    initial_model: str | None = None
    validate_every_round: bool = False
    #: Set (with defaults filled in) exactly when ``workflow == "fedopt"``.
    fedopt: FedOptConfig | None = None
    #: Set (with defaults filled in) exactly when ``workflow == "driver"``.
    driver: DriverConfig | None = None


@dataclass(frozen=True)
class ScriptExecutorConfig:
    """A long-lived Python script that talks to the site through the Client API."""

    script: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT
    executor: Literal["script"] = "script"


@dataclass(frozen=True)
class CommandExecutorConfig:
    """Scaleout-style entry points, each an argv list run as its own process."""

    train: tuple[str, ...]
    startup: tuple[str, ...] | None = None
    validate: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    executor: Literal["command"] = "command"


#: What a site runs; a compute package (``scaleout.yaml``) runs as commands too.
ClientConfig = Union[ScriptExecutorConfig, CommandExecutorConfig, "PackageExecutorConfig"]


# -- schemas ---------------------------------------------------------------------------


def _load_schema(name: str) -> dict[str, Any]:
    text = resources.files("flare_protocol").joinpath("schemas", name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    schema = _load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def server_config_schema() -> dict[str, Any]:
    """The JSON Schema of ``config_fed_server.json`` (a fresh copy)."""
    return _load_schema("server_config.schema.json")


def client_config_schema() -> dict[str, Any]:
    """The JSON Schema of ``config_fed_client.json`` (a fresh copy)."""
    return _load_schema("client_config.schema.json")


def _field_path(path: Sequence[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: Any) -> str:
    """One human line for a jsonschema ValidationError."""
    kind = error.validator
    value = error.instance
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if kind == "required":
        missing = [k for k in error.validator_value if k not in (value or {})]
        return f"missing required field {missing[0]!r}" if missing else error.message
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in error.schema.get("properties", {}))
        return (
            f"unknown field {extra[0]!r} (allowed: {', '.join(allowed)})"
            if extra
            else error.message
        )
    if "propertyNames" in error.relative_schema_path:
        return f"name {shown} is not allowed (letters, digits, _; FLARE_ names are reserved)"
    if kind == "type":
        hint = " (an argv list, never a shell string)" if error.validator_value == "array" else ""
        return f"must be of type {error.validator_value}, got {shown}{hint}"
    if kind == "enum":
        return f"must be one of {', '.join(map(str, error.validator_value))}, got {shown}"
    if kind == "const":
        return f"must be {json.dumps(error.validator_value)}, got {shown}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return f"must be {op[kind]} {error.validator_value}, got {shown}"
    if kind == "pattern":
        return (
            f"{shown} is not a safe relative path or name (no '..', absolute paths or backslashes)"
        )
    if kind in ("minItems", "minLength"):
        return "must not be empty"
    if kind in ("maxItems", "maxLength", "maxProperties"):
        return f"is too long (at most {error.validator_value})"
    return str(error.message)


def _schema_check(schema_name: str, data: object, source: str) -> None:
    from jsonschema.exceptions import best_match

    validator = _validator(schema_name)
    error = best_match(validator.iter_errors(data))
    if error is None:
        return
    where = _field_path(list(error.absolute_path))
    # "missing field" and "unknown field" already name the field in the text.
    if error.validator in ("required", "additionalProperties") or not where:
        prefix = f"{source}: field '{where}' " if where else f"{source}: "
        raise InvalidJobDefinition(f"{prefix}{_describe(error)}", path=source, field=where or None)
    raise InvalidJobDefinition(
        f"{source}: field '{where}' {_describe(error)}", path=source, field=where
    )


def _decode(data: bytes | str | object, source: str) -> object:
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJobDefinition(f"{source}: not UTF-8 text ({exc})", path=source) from exc
    if isinstance(data, str):
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise InvalidJobDefinition(
                f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                path=source,
            ) from exc
        except (ValueError, RecursionError) as exc:  # a number of too many digits, deep nesting
            raise InvalidJobDefinition(f"{source}: not valid JSON: {exc}", path=source) from None
    return data


# -- paths and placeholders ------------------------------------------------------------


def check_relpath(value: str, *, source: str, field_name: str) -> str:
    """Refuse a path that could leave the app folder; return it unchanged.

    Raises:
        InvalidJobDefinition: absolute, ``..``/``.`` parts, backslashes, empty parts, control chars.
    """
    parts = value.split("/")
    bad = (
        not value
        or value.startswith("/")
        or "\\" in value
        or any(ord(c) < 32 for c in value)
        or any(p in ("", ".", "..") for p in parts)
    )
    if bad:
        raise InvalidJobDefinition(
            f"{source}: field '{field_name}' must be a relative path inside the app folder "
            f"(forward slashes, no '..'), got {value!r}",
            path=source,
            field=field_name,
        )
    return value


def substitute_argv(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace ``{name}`` placeholders in each argument; unknown names raise KeyError."""
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in argv]


def _check_argv(entry: str, argv: Sequence[str], source: str) -> None:
    allowed, required = COMMAND_PLACEHOLDERS[entry]
    used: set[str] = set()
    for index, arg in enumerate(argv):
        for name in _PLACEHOLDER.findall(arg):
            if name not in allowed:
                raise InvalidJobDefinition(
                    f"{source}: field '{entry}[{index}]' uses placeholder {{{name}}}, "
                    f"allowed in '{entry}': {', '.join('{' + n + '}' for n in sorted(allowed))}",
                    path=source,
                    field=f"{entry}[{index}]",
                )
            used.add(name)
    for name in sorted(required - used):
        raise InvalidJobDefinition(
            f"{source}: field '{entry}' must pass {{{name}}} to the program "
            f"(where the site expects its output)",
            path=source,
            field=entry,
        )
    program = argv[0]
    if not program.strip():
        raise InvalidJobDefinition(
            f"{source}: field '{entry}[0]' must name the program to run, got {program!r}",
            path=source,
            field=f"{entry}[0]",
        )
    if "/" in program and not program.startswith("{"):
        check_relpath(program, source=source, field_name=f"{entry}[0]")


def command_app_files(config: CommandExecutorConfig) -> list[tuple[str, str]]:
    """(field, relpath) of app files the commands name: a relative program, or the script
    after ``{python}``. They must exist in the app."""
    files: list[tuple[str, str]] = []
    for entry in ("startup", "train", "validate"):
        argv = getattr(config, entry)
        if not argv:
            continue
        if "/" in argv[0] and "{" not in argv[0]:
            files.append((f"{entry}[0]", argv[0]))
        elif argv[0] == "{python}" and len(argv) > 1 and not argv[1].startswith("-"):
            if "{" not in argv[1]:
                files.append((f"{entry}[1]", argv[1]))
    return files


# -- parsing ---------------------------------------------------------------------------


def parse_server_config(data: bytes | str | object, *, source: str = SERVER_CONFIG) -> ServerConfig:
    """Check and parse ``config_fed_server.json`` (bytes, text or an already-decoded object).

    Raises:
        InvalidJobDefinition: naming the file and field.
    """
    obj = _decode(data, source)
    _schema_check("server_config.schema.json", obj, source)
    assert isinstance(obj, dict)
    workflow = obj["workflow"]
    if workflow == "driver":
        return _driver_config(obj, source)
    for key in DRIVER_KEYS:
        if key in obj:
            raise InvalidJobDefinition(
                f"{source}: field '{key}' is only allowed with workflow 'driver', "
                f"got workflow {workflow!r}",
                path=source,
                field=key,
            )
    if "fedopt" in obj and workflow != "fedopt":
        raise InvalidJobDefinition(
            f"{source}: field 'fedopt' is only allowed with workflow 'fedopt', "
            f"got workflow {workflow!r}",
            path=source,
            field="fedopt",
        )
    initial = obj.get("initial_model")
    if initial is not None:
        check_relpath(initial, source=source, field_name="initial_model")
    fedopt = FedOptConfig(**obj.get("fedopt", {})) if workflow == "fedopt" else None
    return ServerConfig(
        workflow=workflow,
        num_rounds=int(obj["num_rounds"]),
        min_responses=obj.get("min_responses"),
        round_timeout=float(obj.get("round_timeout", DEFAULT_ROUND_TIMEOUT)),
        initial_model=initial,
        validate_every_round=bool(obj.get("validate_every_round", False)),
        fedopt=fedopt,
    )


def _driver_config(obj: Mapping[str, Any], source: str) -> ServerConfig:
    for key in ROUND_KEYS:
        if key in obj:
            raise InvalidJobDefinition(
                f"{source}: field '{key}' is not used by workflow 'driver' (the job's driver "
                "decides the rounds, see docs/driver.md); remove it",
                path=source,
                field=key,
            )
    idle = obj.get("driver_idle_timeout")
    driver = DriverConfig(
        idle_timeout=float(idle) if idle is not None else None,
        default_ttl=float(obj.get("default_ttl", DEFAULT_TTL)),
        max_message_bytes=int(obj.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)),
        run_config=dict(obj.get("run_config", {})),
    )
    return ServerConfig(workflow="driver", num_rounds=0, driver=driver)


def parse_client_config(data: bytes | str | object, *, source: str = CLIENT_CONFIG) -> ClientConfig:
    """Check and parse ``config_fed_client.json``.

    Raises:
        InvalidJobDefinition: naming the file and field.
    """
    obj = _decode(data, source)
    _schema_check("client_config.schema.json", obj, source)
    assert isinstance(obj, dict)
    env = dict(obj.get("env", {}))
    if obj["executor"] == "script":
        script = check_relpath(obj["script"], source=source, field_name="script")
        if not script.endswith(".py"):
            raise InvalidJobDefinition(
                f"{source}: field 'script' must name a .py file, got {script!r}",
                path=source,
                field="script",
            )
        return ScriptExecutorConfig(
            script=script,
            args=tuple(obj.get("args", ())),
            env=env,
            launch_timeout=float(obj.get("launch_timeout", DEFAULT_LAUNCH_TIMEOUT)),
        )
    for entry in ("startup", "train", "validate"):
        if entry in obj:
            _check_argv(entry, obj[entry], source)
    return CommandExecutorConfig(
        train=tuple(obj["train"]),
        startup=tuple(obj["startup"]) if "startup" in obj else None,
        validate=tuple(obj["validate"]) if "validate" in obj else None,
        env=env,
    )


def folder_reader(root: str | Path) -> Callable[[str], bytes | None]:
    """``read(relpath)`` for an app folder on disk: the file's bytes, or None when it is
    missing, not a regular file, or would resolve outside ``root``."""
    base = Path(root).resolve()

    def read(relpath: str) -> bytes | None:
        target = (base / relpath).resolve()
        if base not in target.parents or not target.is_file():
            return None
        return target.read_bytes()

    return read


def load_site_config(read: Callable[[str], bytes | None], *, app_name: str = "") -> ClientConfig:
    """The app's site config: ``config/config_fed_client.json`` or a compute package's
    ``scaleout.yaml`` (``fedn.yaml``), whichever the app has, checked and parsed.

    Raises:
        InvalidJobDefinition: neither file or more than one, or the one is invalid.
    """
    from flare_protocol.compute_package import PACKAGE_FILES, parse_package_config

    prefix = f"{app_name}/" if app_name else ""
    found = {
        name: raw for name in (CLIENT_CONFIG, *PACKAGE_FILES) if (raw := read(name)) is not None
    }
    if not found:
        raise InvalidJobDefinition(
            f"{prefix}{CLIENT_CONFIG}: missing; an app deployed to sites needs its executor "
            f"config, or a compute package's {PACKAGE_FILES[0]}",
            path=f"{prefix}{CLIENT_CONFIG}",
        )
    if len(found) > 1:
        names = " and ".join(found)
        raise InvalidJobDefinition(
            f"app {app_name or '.'!r} has {names}: keep one, so that sites know what to run",
            path=f"{prefix}{next(iter(found))}",
        )
    name, raw = next(iter(found.items()))
    if name == CLIENT_CONFIG:
        return parse_client_config(raw, source=prefix + name)
    return parse_package_config(raw, read, source=prefix + name, app_name=app_name)


def client_config_json(read: Callable[[str], bytes | None]) -> object | None:
    """The app's ``config_fed_client.json`` as decoded JSON (what the server sends a site
    with the app), or None for a compute package (the site reads ``scaleout.yaml`` itself).
    """
    raw = read(CLIENT_CONFIG)
    return None if raw is None else _decode(raw, CLIENT_CONFIG)


def validate_app(
    app_name: str,
    read: Callable[[str], bytes | None],
    *,
    deployed_to_server: bool,
    deployed_to_sites: bool,
) -> None:
    """Check one app's config files; ``read(relpath)`` returns a file's bytes or None.

    ``relpath`` is relative to the app folder (``config/config_fed_server.json``). An app
    deployed to the server needs a server config (and its initial model, if named, must be
    a safe ``.npz``); an app deployed to sites needs a client config whose script or
    command files exist in the app.

    Raises:
        InvalidJobDefinition: naming the file and field at fault.
    """
    server_config: ServerConfig | None = None
    if deployed_to_server:
        source = f"{app_name}/{SERVER_CONFIG}"
        raw = read(SERVER_CONFIG)
        if raw is None:
            raise InvalidJobDefinition(
                f"{source}: missing; an app deployed to the server needs its workflow config",
                path=source,
            )
        config = server_config = parse_server_config(raw, source=source)
        if config.initial_model is not None:
            model_bytes = read(config.initial_model)
            if model_bytes is None:
                raise InvalidJobDefinition(
                    f"{source}: field 'initial_model' names {config.initial_model!r}, "
                    f"which is not in app {app_name!r}",
                    path=source,
                    field="initial_model",
                )
            from flare_protocol.models import load_params

            try:
                load_params(model_bytes)
            except InvalidModel as exc:
                raise InvalidJobDefinition(
                    f"{app_name}/{config.initial_model}: not a usable initial model: {exc}",
                    path=f"{app_name}/{config.initial_model}",
                ) from exc
    if deployed_to_sites:
        from flare_protocol.compute_package import PackageExecutorConfig, package_app_files

        client = load_site_config(read, app_name=app_name)
        source = f"{app_name}/{CLIENT_CONFIG}"
        needed: list[tuple[str, str]]
        no_validate = ""
        if isinstance(client, ScriptExecutorConfig):
            needed = [("script", client.script)]
        elif isinstance(client, CommandExecutorConfig):
            needed = command_app_files(client)
            no_validate = "" if client.validate else "validate"
        else:
            assert isinstance(client, PackageExecutorConfig)
            source = f"{app_name}/{client.path}"
            needed = package_app_files(client)
            no_validate = "" if client.entry("validate") else "entry_points.validate"
        if server_config is not None and server_config.validate_every_round and no_validate:
            raise InvalidJobDefinition(
                f"{source}: field '{no_validate}' is needed: {app_name}/{SERVER_CONFIG} sets "
                "validate_every_round, so sites must be able to validate the global model",
                path=source,
                field=no_validate,
            )
        for field_name, relpath in needed:
            check_relpath(relpath, source=source, field_name=field_name)
            if read(relpath) is None:
                raise InvalidJobDefinition(
                    f"{source}: field '{field_name}' names {relpath!r}, "
                    f"which is not in app {app_name!r}",
                    path=source,
                    field=field_name,
                )
