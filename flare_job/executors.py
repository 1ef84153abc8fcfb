"""What runs on a site: a Client API script, command entry points, or an existing app folder.

Every executor is an object with ``add_to_app(app)`` (the :class:`SiteExecutor` protocol):
it adds its files and its site config (``config/config_fed_client.json``, or a compute
package's ``scaleout.yaml``) to the app being built. That is the whole seam, so another
kind is one more class with that method; :class:`~flare_job.FedJob` does not change.

Paths given to an executor (``script``, ``files``, a package folder) are resolved when the
executor is created, against the current directory, so a missing file is named at once.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from flare_job._app import AppContent
from flare_protocol.app_config import SERVER_CONFIG
from flare_protocol.errors import InvalidArgumentError, InvalidJobDefinition
from flare_protocol.job_format import META_FILE

__all__ = ["CommandRunner", "PackageRunner", "ScriptRunner", "SiteExecutor"]

#: Interpreter commands of NVIDIA FLARE's ScriptRunner that mean "the site's Python".
_PYTHON_COMMANDS = frozenset({"python", "python3", "python -u", "python3 -u"})


@runtime_checkable
class SiteExecutor(Protocol):
    """Anything that can put its files and executor config into a site app."""

    def add_to_app(self, app: AppContent) -> None:
        """Add files (``app.add_file``/``add_tree``) and the client config to ``app``."""


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise InvalidArgumentError(
            f"{what} {os.fspath(path)!r} does not exist (looked for {resolved})",
            path=str(resolved),
        )
    return resolved


def _args(value: str | Sequence[str], what: str) -> list[str]:
    """An argument list: a string is split as a shell would split words (no shell runs)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise InvalidArgumentError(f"{what} {value!r} cannot be split: {exc}") from None
    if not all(isinstance(arg, str) for arg in value):
        raise InvalidArgumentError(f"{what} must be a string or a list of strings, got {value!r}")
    return list(value)


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(env or {})
    for key, value in out.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgumentError(f"env must map names to strings, got {key!r}: {value!r}")
    return out


class ScriptRunner:
    """A Python script that uses the Client API (``import flare_site.client as flare``).

    Mirrors NVIDIA FLARE's ``ScriptRunner(script, script_args, launch_external_process)``.
    The script is copied to the app's ``custom/`` folder (on the import path of the script);
    add the modules it imports with ``job.to_clients("src/")`` or ``files=[...]``.

    Args:
        script: the ``.py`` file, relative to the current directory or absolute.
        script_args: arguments after the script, a string (split like a shell) or a list.
        launch_external_process: accepted for NVIDIA FLARE scripts; here a script always
            runs in its own process (never inside the site process), once per job.
        command: NVIDIA FLARE's interpreter command; only ``python3 -u`` and its variants
            are accepted, since the site runs the script with its own Python.
        framework: accepted and ignored (models are numpy ``.npz`` whatever the framework).
        env: extra environment variables for the script (``FLARE_*`` names are reserved).
        launch_timeout: seconds the script has to call ``flare.init()`` (default 60).
        files: more files or folders to copy into ``custom/`` next to the script.
    """

    def __init__(
        self,
        script: str | os.PathLike[str],
        script_args: str | Sequence[str] = "",
        launch_external_process: bool = True,
        command: str = "python3 -u",
        framework: Any = None,
        *,
        env: Mapping[str, str] | None = None,
        launch_timeout: float | None = None,
        files: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.script = _existing(script, "script")
        if not self.script.is_file() or self.script.suffix != ".py":
            raise InvalidArgumentError(
                f"script {os.fspath(script)!r} must be a .py file", path=str(self.script)
            )
        self.script_args = _args(script_args, "script_args")
        if " ".join(command.split()) not in _PYTHON_COMMANDS:
            raise InvalidArgumentError(
                f"ScriptRunner(command={command!r}) is not supported: sites run scripts with "
                "their own Python; use CommandRunner to run another program"
            )
        self.launch_external_process = launch_external_process
        self.framework = framework
        self.env = _env(env)
        self.launch_timeout = launch_timeout
        self.files = [_existing(f, "file") for f in files]

    def add_to_app(self, app: AppContent) -> None:
        """``custom/<script>`` (and ``files``) plus a script-executor client config."""
        name = self.script.name
        app.add_file(f"custom/{name}", self.script)
        _add_files(app, self.files)
        config: dict[str, Any] = {"executor": "script", "script": f"custom/{name}"}
        if self.script_args:
            config["args"] = self.script_args
        if self.env:
            config["env"] = self.env
        if self.launch_timeout is not None:
            config["launch_timeout"] = self.launch_timeout
        app.set_client_config(config)

    def __repr__(self) -> str:
        return f"ScriptRunner({str(self.script)!r}, {self.script_args!r})"


class CommandRunner:
    """Scaleout-style entry points: argv lists (or strings split like a shell, no shell
    runs) with placeholders such as ``{python}``, ``{model_in}``, ``{model_out}``,
    ``{metadata_out}`` and ``{metrics_out}`` (docs/jobs.md, the command executor).

    ``files`` (files or folders) are copied into the app's ``custom/`` folder, so the
    commands name them as ``custom/<name>``.
    """

    def __init__(
        self,
        train: str | Sequence[str],
        validate: str | Sequence[str] | None = None,
        startup: str | Sequence[str] | None = None,
        *,
        files: Sequence[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.train = _args(train, "train")
        self.validate = None if validate is None else _args(validate, "validate")
        self.startup = None if startup is None else _args(startup, "startup")
        self.files = [_existing(f, "file") for f in files]
        self.env = _env(env)

    def add_to_app(self, app: AppContent) -> None:
        """``custom/<files>`` plus a command-executor client config."""
        _add_files(app, self.files)
        config: dict[str, Any] = {"executor": "command", "train": self.train}
        if self.validate is not None:
            config["validate"] = self.validate
        if self.startup is not None:
            config["startup"] = self.startup
        if self.env:
            config["env"] = self.env
        app.set_client_config(config)

    def __repr__(self) -> str:
        return f"CommandRunner(train={self.train!r})"


class PackageRunner:
    """An existing app folder (a compute package): copied into the job as it is.

    The folder holds ``config/config_fed_client.json`` or a Scaleout ``scaleout.yaml`` (with
    its ``python_env``), and the code they name, as the app of a job folder does; a
    ``config/config_fed_server.json`` in it is left out (the job's workflow provides the
    server side), and so is what the folder's ``.ignore``/``.flareignore`` lists.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _existing(path, "package folder")
        if not self.path.is_dir():
            raise InvalidArgumentError(
                f"package {os.fspath(path)!r} must be a folder "
                "(an app with config/ or scaleout.yaml)",
                path=str(self.path),
            )
        if (self.path / META_FILE).is_file():
            raise InvalidJobDefinition(
                f"{self.path} is a whole job folder (it has {META_FILE}); pass one of its "
                "app folders",
                path=str(self.path),
            )

    def add_to_app(self, app: AppContent) -> None:
        """Every file of the package except a server config."""
        app.add_tree(self.path, skip=frozenset({SERVER_CONFIG}))

    def __repr__(self) -> str:
        return f"PackageRunner({str(self.path)!r})"


def _add_files(app: AppContent, files: Sequence[Path]) -> None:
    for path in files:
        if path.is_dir():
            app.add_tree(path, "custom")
        else:
            app.add_file(f"custom/{path.name}", path)
