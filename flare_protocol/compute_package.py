"""Scaleout Edge / FEDn compute packages: ``scaleout.yaml`` and its ``python_env.yaml``.

An app folder may hold ``scaleout.yaml`` (or FEDn's ``fedn.yaml``) instead of
``config/config_fed_client.json``::

    python_env: python_env.yaml          # optional: a virtualenv for every entry point
    entry_points:
      build:    {command: python model.py}      # makes the seed model (flare job run build)
      startup:  {command: python data.py}       # once per job, before the first task
      train:    {command: python train.py}      # + MODEL_IN MODEL_OUT; writes MODEL_OUT-metadata
      validate: {command: python validate.py}   # + MODEL_IN VALIDATIONS_JSON
      predict:  {command: python predict.py}    # accepted, never run here

A site runs the entry points with the command executor's contract; this module only reads
and checks the files, as strictly as the JSON configs (unknown keys refused with the
closest known one, missing entry points, unsafe paths, commands a shell would be needed
for), and returns frozen dataclasses. Commands run without a shell: the command string is
split into words (:func:`shlex.split`), a first word ``python`` (``python3``,
``python3.X``) becomes the site's interpreter or the job's python_env, and Scaleout's
arguments are appended (:meth:`PackageExecutorConfig.as_commands`).

``python_env.yaml`` is Scaleout's format: ``name``, ``python`` (informational: sites
build with their own interpreter), ``build_dependencies`` (installed first) and
``dependencies``, each a list of pip requirement specifiers. An entry that is a pip option
(``-r``, ``--index-url`` ...) is refused: the site chooses where packages come from.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from flare_protocol.app_config import CommandExecutorConfig, check_relpath
from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.known_keys import unknown_keys

__all__ = [
    "ENTRY_POINTS",
    "PACKAGE_FILES",
    "PackageExecutorConfig",
    "PythonEnvSpec",
    "package_app_files",
    "parse_package_config",
    "parse_python_env",
]

#: The names a compute package's config may have (Scaleout Edge's, then FEDn's).
PACKAGE_FILES = ("scaleout.yaml", "fedn.yaml")
#: Entry points a package may define; ``predict`` is accepted and never run.
ENTRY_POINTS = ("build", "startup", "train", "validate", "predict")
_SPLIT_LEARNING = frozenset({"forward", "backward"})
_TOP_KEYS = frozenset({"python_env", "entry_points"})
_ENV_KEYS = frozenset({"name", "python", "build_dependencies", "dependencies"})
MAX_YAML_BYTES = 1024 * 1024
_MAX_COMMAND = 4096
_MAX_REQUIREMENTS = 1000
_MAX_REQUIREMENT = 1000
_PYTHON = re.compile(r"^python(3(\.[0-9]+)?)?$")
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
#: Characters that mean something only to a shell; commands here run without one.
_SHELL_CHARS = frozenset("|&;<>`$")
#: What Scaleout passes after each entry point's own words.
_APPENDED: dict[str, tuple[str, ...]] = {
    "train": ("{model_in}", "{model_out}"),
    "validate": ("{model_in}", "{metrics_out}"),
}


@dataclass(frozen=True)
class PythonEnvSpec:
    """``python_env.yaml``: the packages of a job's virtualenv (Scaleout's format)."""

    name: str = ""
    dependencies: tuple[str, ...] = ()
    #: Installed before ``dependencies``.
    build_dependencies: tuple[str, ...] = ()
    #: The Python version the package asks for: recorded, not enforced (sites build with
    #: their own interpreter, as Scaleout's clients do).
    python: str | None = None
    #: Where the file is in the app.
    path: str = "python_env.yaml"


@dataclass(frozen=True)
class PackageExecutorConfig:
    """A compute package's entry points, each an argv list (``{python}``: the interpreter)."""

    entry_points: Mapping[str, tuple[str, ...]]
    python_env: PythonEnvSpec | None = None
    #: The config file in the app (``scaleout.yaml`` or ``fedn.yaml``).
    path: str = "scaleout.yaml"
    executor: Literal["package"] = "package"

    def entry(self, name: str) -> tuple[str, ...] | None:
        """The argv of entry point ``name`` as written (None when the package has none)."""
        return self.entry_points.get(name)

    def as_commands(self) -> CommandExecutorConfig:
        """The command executor's config that runs these entry points as Scaleout does:
        ``train`` gets ``MODEL_IN MODEL_OUT`` appended, ``validate`` ``MODEL_IN JSON``."""

        def argv(name: str) -> tuple[str, ...] | None:
            words = self.entry_points.get(name)
            return None if words is None else (*words, *_APPENDED.get(name, ()))

        train = argv("train")
        assert train is not None  # the parser requires it
        return CommandExecutorConfig(
            train=train, startup=argv("startup"), validate=argv("validate"), env={}
        )


# -- YAML ------------------------------------------------------------------------------


#: libyaml's parser when PyYAML has it: the same safe subset, and it refuses nesting deeper
#: than 1000 at once, where the pure-Python parser spends seconds reaching Python's
#: recursion limit (measured: 2.4 s for ``[`` * 5000, any length past that).
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SAFE_LOADER):  # type: ignore[valid-type, misc]
    """``yaml.safe_load`` that refuses a key given twice (PyYAML keeps the last silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable: construct_mapping names it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", key_node.start_mark
            )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _load_yaml(data: bytes | str, source: str) -> object:
    if isinstance(data, bytes):
        if len(data) > MAX_YAML_BYTES:
            raise InvalidJobDefinition(
                f"{source}: {len(data)} bytes is larger than the {MAX_YAML_BYTES} allowed",
                path=source,
            )
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidJobDefinition(
                f"{source}: not UTF-8 text ({exc.reason})", path=source
            ) from None
    try:
        return yaml.load(data, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        if "maximum nesting depth" in str(exc.problem):  # libyaml's limit
            raise InvalidJobDefinition(f"{source}: nested too deeply", path=source) from None
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InvalidJobDefinition(
            f"{source}: not valid YAML: {exc.problem or exc}{where}", path=source
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidJobDefinition(f"{source}: not valid YAML: {exc}", path=source) from None
    except RecursionError:
        raise InvalidJobDefinition(f"{source}: nested too deeply", path=source) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors raise these for a value its resolver matched but cannot
        # build: a date of month 13 (2020-13-45), ``!!int abc``.
        raise InvalidJobDefinition(
            f"{source}: not valid YAML: a value cannot be read ({exc})", path=source
        ) from None


def _refuse(source: str, field_name: str | None, text: str) -> InvalidJobDefinition:
    prefix = f"{source}: field '{field_name}' " if field_name else f"{source}: "
    return InvalidJobDefinition(prefix + text, path=source, field=field_name)


def _check_keys(data: Mapping[Any, Any], known: frozenset[str], source: str, where: str) -> None:
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise _refuse(source, where or None, f"has a key that is not a string: {odd[0]!r}")
    unknown = unknown_keys(data, known)
    if unknown:
        raise _refuse(
            source,
            where or None,
            f"has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}",
        )


# -- scaleout.yaml ---------------------------------------------------------------------


def _command(value: object, source: str, field_name: str) -> tuple[str, ...]:
    if not isinstance(value, str) or not value.strip():
        raise _refuse(source, field_name, f"must be a non-empty string, got {value!r}")
    if len(value) > _MAX_COMMAND:
        raise _refuse(source, field_name, f"is too long (at most {_MAX_COMMAND} characters)")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise _refuse(source, field_name, f"cannot be split into words: {exc}") from None
    if not words or not words[0]:  # '""': quotes around nothing
        raise _refuse(source, field_name, f"names no program to run, got {value!r}")
    shell = sorted({c for word in words for c in word if c in _SHELL_CHARS})
    if shell or "=" in words[0]:
        what = f"uses {' '.join(shell)}" if shell else f"starts with an assignment {words[0]!r}"
        raise _refuse(
            source,
            field_name,
            f"{what}: commands run without a shell here; put the pipeline, redirection or "
            "variable in a script and run that (python run.py, or bash run.sh)",
        )
    for word in words:
        found = _PLACEHOLDER.search(word)
        if found:
            raise _refuse(
                source,
                field_name,
                f"contains {found.group(0)!r}: scaleout.yaml commands get their paths "
                "appended; placeholders are for config_fed_client.json",
            )
    program = words[0]
    if _PYTHON.match(program):
        return ("{python}", *words[1:])
    if "/" in program:
        check_relpath(program, source=source, field_name=field_name)
    return tuple(words)


def parse_package_config(
    data: bytes | str,
    read: Callable[[str], bytes | None],
    *,
    source: str = PACKAGE_FILES[0],
    app_name: str = "",
) -> PackageExecutorConfig:
    """Check and parse ``scaleout.yaml`` (and the ``python_env`` file it names, through
    ``read(relpath)``, which returns a file of the app or None).

    Raises:
        InvalidJobDefinition: naming the file and field at fault.
    """
    obj = _load_yaml(data, source)
    if not isinstance(obj, dict):
        raise _refuse(source, None, "must be a mapping with 'entry_points' (and 'python_env')")
    _check_keys(obj, _TOP_KEYS, source, "")
    entries = obj.get("entry_points")
    if not isinstance(entries, dict) or not entries:
        raise _refuse(
            source,
            "entry_points",
            "must be a mapping of entry point names (train, validate, startup, build) "
            f"to {{command: ...}}, got {entries!r}",
        )
    split = sorted(_SPLIT_LEARNING & set(entries))
    if split:
        raise _refuse(
            source,
            f"entry_points.{split[0]}",
            "is a split-learning entry point; split learning is not supported here",
        )
    _check_keys(entries, frozenset(ENTRY_POINTS), source, "entry_points")
    if "train" not in entries:
        raise _refuse(source, "entry_points.train", "is required (python train.py ...)")
    parsed: dict[str, tuple[str, ...]] = {}
    for name, spec in entries.items():
        where = f"entry_points.{name}"
        if not isinstance(spec, dict):
            raise _refuse(source, where, f"must be a mapping {{command: ...}}, got {spec!r}")
        _check_keys(spec, frozenset({"command"}), source, where)
        if "command" not in spec:
            raise _refuse(source, f"{where}.command", "is required")
        parsed[name] = _command(spec["command"], source, f"{where}.command")
    env: PythonEnvSpec | None = None
    env_path = obj.get("python_env")
    if env_path is not None:
        if not isinstance(env_path, str):
            raise _refuse(source, "python_env", f"must be a file name, got {env_path!r}")
        check_relpath(env_path, source=source, field_name="python_env")
        raw = read(env_path)
        if raw is None:
            raise _refuse(
                source,
                "python_env",
                f"names {env_path!r}, which is not in app {app_name or 'the app'!r}",
            )
        prefix = f"{app_name}/" if app_name else ""
        env = parse_python_env(raw, source=f"{prefix}{env_path}", path=env_path)
    file_name = source.rsplit("/", 1)[-1]
    return PackageExecutorConfig(
        entry_points=parsed,
        python_env=env,
        path=file_name if file_name in PACKAGE_FILES else PACKAGE_FILES[0],
    )


def package_app_files(config: PackageExecutorConfig) -> list[tuple[str, str]]:
    """(field, relpath) of app files the entry points name: a relative program, or the
    script after ``python``. They must exist in the app (``predict``, never run, is not
    checked)."""
    files: list[tuple[str, str]] = []
    for name in ("build", "startup", "train", "validate"):
        words = config.entry(name)
        if not words:
            continue
        where = f"entry_points.{name}.command"
        if words[0] == "{python}":
            if len(words) > 1 and not words[1].startswith("-"):
                files.append((where, words[1]))
        elif "/" in words[0]:
            files.append((where, words[0]))
    return files


# -- python_env.yaml -------------------------------------------------------------------


def _requirements(value: object, source: str, field_name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _refuse(source, field_name, f"must be a list of requirements, got {value!r}")
    if len(value) > _MAX_REQUIREMENTS:
        raise _refuse(source, field_name, f"is too long (at most {_MAX_REQUIREMENTS} entries)")
    out = []
    for index, item in enumerate(value):
        where = f"{field_name}[{index}]"
        if not isinstance(item, str) or not item.strip():
            raise _refuse(source, where, f"must be a requirement string, got {item!r}")
        text = item.strip()
        if len(text) > _MAX_REQUIREMENT or any(ord(c) < 32 for c in text):
            raise _refuse(source, where, f"is not a single requirement: {text[:80]!r}")
        if text.startswith("-"):
            raise _refuse(
                source,
                where,
                f"is a pip option ({text[:80]!r}); the site chooses where packages come from "
                "(its python_env_pip_options setting): list requirements only",
            )
        out.append(text)
    return tuple(out)


def parse_python_env(
    data: bytes | str, *, source: str = "python_env.yaml", path: str = "python_env.yaml"
) -> PythonEnvSpec:
    """Check and parse ``python_env.yaml`` (``path``: where it is in the app).

    Raises:
        InvalidJobDefinition: naming the file and field at fault.
    """
    obj = _load_yaml(data, source)
    if not isinstance(obj, dict):
        raise _refuse(source, None, "must be a mapping with 'dependencies'")
    _check_keys(obj, _ENV_KEYS, source, "")
    name = obj.get("name", "")
    if not isinstance(name, str):
        raise _refuse(source, "name", f"must be a string, got {name!r}")
    python = obj.get("python")
    if python is not None and (
        isinstance(python, bool) or not isinstance(python, (str, int, float))
    ):
        raise _refuse(source, "python", f"must be a version such as '3.11', got {python!r}")
    return PythonEnvSpec(
        name=name,
        dependencies=_requirements(obj.get("dependencies"), source, "dependencies"),
        build_dependencies=_requirements(
            obj.get("build_dependencies"), source, "build_dependencies"
        ),
        python=None if python is None else str(python),
        path=path,
    )
