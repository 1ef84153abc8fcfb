"""Virtualenvs for compute packages' ``python_env``: built once per specification, reused.

Theory of operation. An environment is identified by a key, the SHA-256 of what decides
its content: the requirement lists of ``python_env.yaml``, the interpreter it is built
from (path and version) and whether it sees that interpreter's packages
(``system_site_packages``). It lives in ``<root>/<key[:20]>/`` and is built by
``python -m venv`` then ``pip install`` (``build_dependencies`` first, then
``dependencies``, with the site's pip options), every step a subprocess in its own process
group whose output goes to the job's log. A file ``.flare-env.json`` written last (whole
or not at all) marks a finished environment: a folder without it (a build that failed or
was killed) is never used, and the next build removes it first. The venv is built where it
stays rather than in a temporary folder renamed at the end, because a venv is not
relocatable: pip writes its absolute path into the scripts it installs.

Builds of one key take turns under an exclusive lock on ``<root>/<key[:20]>.lock``
(``flock``), so site processes that share a root (the ``python_env_dir`` setting) never
build the same environment at once; whoever gets the lock second finds the marker and
reuses the environment. Within one process, jobs that need the same environment await
one build. A job aborted meanwhile stops waiting, but the build goes on to the end (the
next job needs it too) unless the site stops (:meth:`PythonEnvs.close`).

Environments are never deleted automatically: remove ``<root>/<folder>`` while no job runs
to reclaim the space.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import site
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from flare_protocol._direct_io import replace_file
from flare_protocol.compute_package import PythonEnvSpec
from flare_protocol.errors import ExecutionError
from flare_site.executors.process import OutputSink, UserProcess, safe_base_env
from flare_site.executors.script import describe_exit
from flare_site.user_account import UserAccount, hand_over_tree

__all__ = ["MARKER", "OUTPUT_STREAM", "PythonEnv", "PythonEnvs"]

#: Written last into a finished environment; its absence means "not usable".
MARKER = ".flare-env.json"
#: The ``stream`` name of the builder's lines in a job's log.
OUTPUT_STREAM = "python_env"
_KEY_CHARS = 20
_LOCK_POLL = 0.2
#: Variables that would make the new environment's Python or pip look elsewhere.
_DROPPED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


@dataclass(frozen=True)
class PythonEnv:
    """A finished environment."""

    key: str
    path: Path
    #: False when this call built it; True when it was there already.
    reused: bool

    @property
    def bin_dir(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        """The environment's interpreter (what ``python`` in an entry point runs)."""
        return self.bin_dir / "python"


class PythonEnvs:
    """The environments of one site (or of ``flare job run``), kept under ``root``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        allow_builds: bool = True,
        pip_options: Sequence[str] = (),
        system_site_packages: bool = False,
        env: Mapping[str, str] | None = None,
        run_as: UserAccount | None = None,
    ) -> None:
        """
        Args:
            root: where environments live (created when the first one is built).
            allow_builds: False: only environments already built may be used; a job that
                needs another fails at once.
            pip_options: added to every ``pip install`` (``--index-url URL``,
                ``--no-index --find-links DIR``, ``--proxy URL`` ...).
            system_site_packages: environments also see the packages of the site's Python
                (those of its virtualenv too, when it runs in one).
            env: the environment pip runs in; None: the allowlist user code gets from the
                site's (PATH, HOME, LANG ...), so pip reads the site user's pip.conf.
            run_as: the user user code runs as (``run_user_code_as``), when not the
                site's: a ``pip install`` runs a package's build code, so it runs as that
                user too, in an environment folder of its own (``root`` stays the site's).
        """
        self.run_as = run_as
        self.root = Path(root)
        self.allow_builds = allow_builds
        self.pip_options = tuple(pip_options)
        self.system_site_packages = system_site_packages
        base = dict(env) if env is not None else safe_base_env(run_as=run_as)
        for name in _DROPPED:
            base.pop(name, None)
        base.update(
            {"PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}
        )
        self._env = base
        self._builds: dict[str, asyncio.Task[PythonEnv]] = {}

    def key(self, spec: PythonEnvSpec) -> str:
        """The content hash that names ``spec``'s environment on this site."""
        document = {
            "format": 1,
            "python": sys.executable,
            "python_version": sys.version,
            "system_site_packages": self.system_site_packages,
            "build_dependencies": list(spec.build_dependencies),
            "dependencies": list(spec.dependencies),
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path_of(self, spec: PythonEnvSpec) -> Path:
        """Where ``spec``'s environment is (or would be) on this site."""
        return self.root / self.key(spec)[:_KEY_CHARS]

    async def ensure(
        self, spec: PythonEnvSpec, *, on_output: OutputSink | None = None
    ) -> PythonEnv:
        """The finished environment for ``spec``: reused if built, else built now.

        Cancelling the caller stops its wait, not the build.

        Raises:
            ExecutionError: builds are not allowed here and it is not built, or a build
                step failed (``returncode``, ``stderr_tail``: pip's last lines).
        """
        key = self.key(spec)
        path = self.root / key[:_KEY_CHARS]
        say = _Say(on_output)
        if (path / MARKER).is_file():
            say(f"reusing environment {path} for {spec.path} (key {key[:12]})")
            return PythonEnv(key, path, reused=True)
        if not self.allow_builds:
            raise ExecutionError(
                f"{spec.path}: this site does not build Python environments "
                "(python_env_builds is false in its local/settings.json) and this "
                f"environment is not built on it ({path}); ask the site's operator to build "
                "it, or run the package without python_env"
            )
        task = self._builds.get(key)
        if task is None:
            task = asyncio.ensure_future(self._build(spec, key, path, say, on_output))
            self._builds[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            say(f"waiting for the build of environment {path}, started for another job")
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[PythonEnv]) -> None:
        if self._builds.get(key) is task:
            del self._builds[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaits any more is not logged

    async def close(self) -> None:
        """Stop every build in progress (the site is stopping): their processes are killed
        and their unfinished folders removed."""
        tasks = list(self._builds.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _build(
        self,
        spec: PythonEnvSpec,
        key: str,
        path: Path,
        say: _Say,
        on_output: OutputSink | None,
    ) -> PythonEnv:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        locked = False
        try:
            announced = False
            while not locked:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except BlockingIOError:
                    if not announced:
                        say(f"another process is building environment {path}; waiting for it")
                        announced = True
                    await asyncio.sleep(_LOCK_POLL)
            if (path / MARKER).is_file():
                say(f"reusing environment {path}, just built by another process")
                return PythonEnv(key, path, reused=True)
            if path.exists():
                say(f"removing the unfinished environment {path} a stopped build left")
                await asyncio.to_thread(shutil.rmtree, path)
            return await self._make(spec, key, path, say, on_output)
        except BaseException:
            if locked:  # ours and unfinished: nobody may use it
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, path, True))
            raise
        finally:
            os.close(fd)  # releases the lock

    async def _make(
        self,
        spec: PythonEnvSpec,
        key: str,
        path: Path,
        say: _Say,
        on_output: OutputSink | None,
    ) -> PythonEnv:
        started = time.monotonic()
        counts = f"{len(spec.build_dependencies)} + {len(spec.dependencies)} requirements"
        say(f"building environment {path} for {spec.path} ({counts})")
        venv = [sys.executable, "-m", "venv"]
        if self.system_site_packages:
            venv.append("--system-site-packages")
        # As the site (the standard library's venv, no code of the job's), then the
        # environment is handed to user code's user before pip runs anyone's build code:
        # the site never writes into a folder user code could have laid links in.
        await self._step(
            [*venv, str(path)], "creating the virtualenv", spec, on_output, as_site=True
        )
        if self.system_site_packages:
            await asyncio.to_thread(_see_site_packages, path)
        if self.run_as is not None:
            await asyncio.to_thread(hand_over_tree, path, self.run_as)
        python = str(path / "bin" / "python")
        pip = [python, "-m", "pip", "install", *self.pip_options]
        if spec.build_dependencies:
            what = "pip install of build_dependencies"
            await self._step([*pip, *spec.build_dependencies], what, spec, on_output)
        if spec.dependencies:
            await self._step([*pip, *spec.dependencies], "pip install", spec, on_output)
        record = {
            "key": key,
            "spec": asdict(spec),
            "python": sys.executable,
            "python_version": sys.version,
            "system_site_packages": self.system_site_packages,
            "pip_options": list(self.pip_options),
            "built_at": time.time(),
            "build_seconds": round(time.monotonic() - started, 3),
        }
        data = (json.dumps(record, indent=2) + "\n").encode("utf-8")
        await asyncio.to_thread(replace_file, path / MARKER, data)
        say(f"built environment {path} in {time.monotonic() - started:.1f} s")
        return PythonEnv(key, path, reused=False)

    async def _step(
        self,
        argv: list[str],
        what: str,
        spec: PythonEnvSpec,
        on_output: OutputSink | None,
        *,
        as_site: bool = False,
    ) -> None:
        def forward(_stream: str, line: str) -> None:
            if on_output is not None:
                on_output(OUTPUT_STREAM, line)

        try:
            proc = await UserProcess.spawn(
                argv,
                cwd=self.root,
                env=self._env,
                on_output=forward,
                run_as=None if as_site else self.run_as,
            )
        except OSError as exc:
            raise ExecutionError(f"{spec.path}: {what} could not start: {exc}") from exc
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            await proc.kill_group(grace=1.0)
            raise
        await proc.reap_group()
        if code != 0:
            tail = proc.stderr_tail()
            raise ExecutionError(
                describe_exit(f"{spec.path}: {what}", code, tail),
                returncode=code,
                stderr_tail=tail,
            )


def _see_site_packages(env: Path) -> None:
    """Let ``env`` see the packages of the site's own Python, also when the site itself runs
    in a virtualenv (``--system-site-packages`` alone shows only the base installation's).
    The env's own packages come first; ``site.addsitedir`` also reads the folders' ``.pth``
    files (editable installs)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    lines = [f"import site; site.addsitedir({folder!r})\n" for folder in site.getsitepackages()]
    (env / "lib" / version / "site-packages" / "_flare_site_packages.pth").write_text(
        "".join(lines)
    )


class _Say:
    """Status lines of the builder, into the job's log (the ``python_env`` stream)."""

    def __init__(self, on_output: OutputSink | None) -> None:
        self._on_output = on_output

    def __call__(self, text: str) -> None:
        if self._on_output is not None:
            with contextlib.suppress(Exception):
                self._on_output(OUTPUT_STREAM, text)
