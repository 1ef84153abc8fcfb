"""FedJob: build a job folder from Python, as NVIDIA FLARE's Job API does.

Theory of operation. A :class:`FedJob` collects objects and where they go: a workflow and
an initial model for the server (``to_server``), an executor and resources for every site
(``to_clients``) or for a named site (``to(obj, "site-1")``). Nothing is written until
:meth:`FedJob.export_job`, which lays the apps out, writes ``meta.json`` with only its
documented keys, checks the folder with the server's own
:func:`flare_protocol.job_format.validate_job_folder`, and only then moves it into place.

Layout. Without named sites the job is one app, ``app``, deployed to ``"@ALL"`` (server
config and client config side by side, as the examples are). Once a site is named with
``to()``, the job runs on the named sites only: ``app_server`` goes to ``"server"`` and
each named site gets ``app_<site>`` holding its own executor (or the ``to_clients`` one)
plus every ``to_clients`` resource.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_job._app import AppContent, json_file_bytes
from flare_job.executors import SiteExecutor
from flare_job.workflows import INITIAL_MODEL, FedAvg, FedOpt, InitialModel, Workflow
from flare_protocol.errors import InvalidArgumentError, InvalidJobDefinition, InvalidTarget
from flare_protocol.job_format import (
    JOB_NAME_RE,
    META_FILE,
    SITE_NAME_RE,
    validate_job_folder,
)

if TYPE_CHECKING:
    from flare_job._simulator import SimulationResult

__all__ = ["FedAvgJob", "FedJob", "FedOptJob"]

SERVER = "server"
ALL_SITES = "@ALL"


@dataclass
class _SiteSide:
    """What one site (or every site) gets: an executor and resource paths."""

    executor: SiteExecutor | None = None
    resources: list[Path] = field(default_factory=list)


class FedJob:
    """A job under construction; :meth:`export_job` writes it as a job folder.

    Args:
        name: the job's name (``meta.json`` ``name`` and the exported folder's name).
        min_clients: sites that must be connected before the job starts.
        mandatory_clients: sites that must take part.
        custom_props: your own properties, kept in the job's meta (``meta.json``
            ``custom_props``); flare-admin does not use them.
    """

    def __init__(
        self,
        name: str = "fed_job",
        min_clients: int = 1,
        mandatory_clients: Sequence[str] | None = None,
        custom_props: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not JOB_NAME_RE.match(name):
            raise InvalidArgumentError(
                f"job name {name!r} is not usable: letters, digits, '.', '_', '-' and spaces, "
                "starting with a letter or digit"
            )
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise InvalidArgumentError(f"min_clients must be an integer >= 1, got {min_clients!r}")
        self.name = name
        self.min_clients = min_clients
        self.mandatory_clients = [_site(s) for s in (mandatory_clients or ())]
        self.custom_props = dict(custom_props or {})
        self.workflow: Workflow | None = None
        self.initial_model: InitialModel | None = None
        self._clients = _SiteSide()
        self._sites: dict[str, _SiteSide] = {}

    # -- assigning objects ------------------------------------------------------------------

    def to(self, obj: Any, target: str) -> None:
        """Send ``obj`` to ``target``: ``"server"`` or a site name.

        The server takes a workflow (:class:`~flare_job.FedAvg`, :class:`~flare_job.FedOpt`)
        and an :class:`~flare_job.InitialModel` (or a dict of numpy arrays). A site takes
        an executor (:class:`~flare_job.ScriptRunner`, :class:`~flare_job.CommandRunner`,
        :class:`~flare_job.PackageRunner`, or any object with ``add_to_app``) and
        resources: a file or folder path, copied into the app's ``custom/``.

        Raises:
            InvalidTarget: the object cannot go to that target.
            InvalidArgumentError: an object of a kind a job does not take.
        """
        if target == SERVER:
            self.to_server(obj)
        elif target == ALL_SITES:
            self.to_clients(obj)
        else:
            self._to_site(obj, self._sites.setdefault(_site(target), _SiteSide()), target)

    def to_server(self, obj: Any) -> None:
        """Send a workflow or the initial model to the server (see :meth:`to`)."""
        if isinstance(obj, Workflow):
            if self.workflow is not None:
                raise InvalidArgumentError(
                    f"job {self.name!r} already has a workflow ({self.workflow!r}); a job runs one"
                )
            self.workflow = obj
        elif isinstance(obj, (InitialModel, Mapping)):
            if self.initial_model is not None:
                raise InvalidArgumentError(f"job {self.name!r} already has an initial model")
            self.initial_model = obj if isinstance(obj, InitialModel) else InitialModel(obj)
        elif isinstance(obj, SiteExecutor) or isinstance(obj, (str, os.PathLike)):
            raise InvalidTarget(
                f"{obj!r} cannot go to the server: the server runs no user code; send it to "
                "the sites with job.to_clients(...) or job.to(..., 'site-1')",
                target=SERVER,
            )
        else:
            raise InvalidArgumentError(
                f"the server takes a workflow (FedAvg, FedOpt) or an initial model, got "
                f"{type(obj).__name__}"
            )

    def to_clients(self, obj: Any) -> None:
        """Send an executor or a resource to every site (see :meth:`to`)."""
        self._to_site(obj, self._clients, "every site")

    def _to_site(self, obj: Any, side: _SiteSide, where: str) -> None:
        if isinstance(obj, (Workflow, InitialModel)):
            raise InvalidTarget(
                f"{obj!r} belongs to the server: use job.to_server(...)", target=where
            )
        if isinstance(obj, SiteExecutor):
            if side.executor is not None:
                raise InvalidArgumentError(
                    f"{where} already runs {side.executor!r}; a site runs one executor per job"
                )
            side.executor = obj
        elif isinstance(obj, (str, os.PathLike)):
            path = Path(obj).expanduser().resolve()
            if not path.exists():
                raise InvalidArgumentError(
                    f"resource {os.fspath(obj)!r} does not exist (looked for {path})",
                    path=str(path),
                )
            side.resources.append(path)
        else:
            raise InvalidArgumentError(
                "a site takes an executor (ScriptRunner, CommandRunner, PackageRunner) or a "
                f"file or folder to copy, got {type(obj).__name__}"
            )

    # -- the folder -------------------------------------------------------------------------

    @property
    def site_names(self) -> list[str]:
        """The sites named with :meth:`to` (empty: the job goes to every site)."""
        return list(self._sites)

    def _apps(self) -> tuple[dict[str, AppContent], dict[str, list[str]]]:
        """The apps and the deploy_map."""
        if self.workflow is None:
            raise InvalidJobDefinition(
                f"job {self.name!r} has no workflow: use FedAvgJob/FedOptJob, or "
                "job.to_server(FedAvg(num_rounds=...))"
            )
        server_config = self.workflow.server_config()
        if self.initial_model is not None:
            server_config["initial_model"] = INITIAL_MODEL
        if not self._sites:
            app = AppContent("app")
            self._add_server(app, server_config)
            self._add_site(app, self._clients, "every site")
            return {"app": app}, {"app": [ALL_SITES]}
        server = AppContent("app_server")
        self._add_server(server, server_config)
        apps, deploy_map = {"app_server": server}, {"app_server": [SERVER]}
        for site, side in self._sites.items():
            name = f"app_{site}"
            app = apps[name] = AppContent(name)
            merged = _SiteSide(
                side.executor or self._clients.executor,
                [*self._clients.resources, *side.resources],
            )
            self._add_site(app, merged, site)
            deploy_map[name] = [site]
        return apps, deploy_map

    def _add_server(self, app: AppContent, config: dict[str, Any]) -> None:
        app.set_server_config(config)
        if self.initial_model is not None:
            app.add_file(INITIAL_MODEL, self.initial_model.content())

    def _add_site(self, app: AppContent, side: _SiteSide, where: str) -> None:
        if side.executor is None:
            raise InvalidJobDefinition(
                f"job {self.name!r}: {where} has no executor: add one with "
                "job.to_clients(ScriptRunner('train.py')) or job.to(runner, 'site-1')"
            )
        for path in side.resources:
            if path.is_dir():
                app.add_tree(path, "custom")  # a folder's files go flat into custom/
            else:
                app.add_file(f"custom/{path.name}", path)
        side.executor.add_to_app(app)

    def meta(self) -> dict[str, Any]:
        """The job's ``meta.json`` (documented keys only; see docs/jobs.md)."""
        return self._meta(self._apps()[1])

    def _meta(self, deploy_map: dict[str, list[str]]) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "min_clients": self.min_clients,
            "deploy_map": deploy_map,
            "resource_spec": {},
        }
        if self.mandatory_clients:
            meta["mandatory_clients"] = list(self.mandatory_clients)
        if self.custom_props:
            meta["custom_props"] = dict(self.custom_props)
        return meta

    def export_job(self, job_root: str | os.PathLike[str]) -> str:
        """Write the job as ``<job_root>/<name>/`` and return that folder's path.

        The folder is built beside its final place, checked with the server's own job
        validation, then moved in; an earlier export of a job there is replaced.

        Raises:
            InvalidJobDefinition: the job is incomplete or invalid (naming what and how to fix).
            InvalidArgumentError: ``<job_root>/<name>`` exists and is not a job folder.
        """
        apps, deploy_map = self._apps()
        root = Path(job_root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        dest = root / self.name
        if dest.exists() and not _replaceable(dest):
            raise InvalidArgumentError(
                f"cannot export job {self.name!r} to {dest}: it exists and is not a job folder "
                "(no meta.json); remove it or export elsewhere",
                path=str(dest),
            )
        build = Path(tempfile.mkdtemp(prefix=f".{self.name}.", dir=root))
        try:
            folder = build / self.name
            folder.mkdir()
            (folder / META_FILE).write_bytes(json_file_bytes(self._meta(deploy_map)))
            for name, app in apps.items():
                app.write(folder / name)
            validate_job_folder(folder)
            if dest.exists():
                old = build / ".replaced"
                os.replace(dest, old)
            os.replace(folder, dest)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        return str(dest)

    def simulator_run(
        self,
        workspace: str | os.PathLike[str],
        n_clients: int | None = None,
        threads: int | None = None,
        gpu: str | None = None,
        *,
        timeout: float = 600.0,
    ) -> SimulationResult:
        """Export the job into ``<workspace>/jobs/`` and run it as ``flare simulate`` does.

        A local project with ``n_clients`` sites (default: the named sites, else
        ``min_clients``) is provisioned in ``workspace``, started, given the job, and
        stopped; the result lands in ``<workspace>/results/<job_id>/``. ``threads`` and
        ``gpu`` are NVIDIA FLARE's and accepted for its scripts; here every site is its
        own process and GPUs are the scripts' business.

        Returns:
            The simulation's outcome (``status``, ``completed``, ``model_path``, metrics).
        Raises:
            FlareError: the job is invalid, or the project could not be started.
        """
        from flare_job._simulator import simulate

        workspace = Path(workspace).expanduser().resolve()
        job_dir = Path(self.export_job(workspace / "jobs"))
        count = n_clients if n_clients is not None else max(self.min_clients, 1)
        return simulate(job_dir, count, workspace, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FedAvgJob(FedJob):
    """A :class:`FedJob` with the FedAvg workflow (and optionally an initial model).

    ``FedAvgJob(name, n_clients, num_rounds, initial_model=...)`` as in NVIDIA FLARE;
    ``initial_model`` may be a dict of numpy arrays or an ``.npz`` path. ``n_clients``
    sets ``min_clients`` unless that is given; the rest goes to :class:`~flare_job.FedAvg`.
    """

    def __init__(
        self,
        name: str = "fed_job",
        n_clients: int | None = None,
        num_rounds: int = 1,
        initial_model: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        min_clients: int | None = None,
        mandatory_clients: Sequence[str] | None = None,
        min_responses: int | None = None,
        round_timeout: float | None = None,
        validate_every_round: bool = False,
        custom_props: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name, min_clients or n_clients or 1, mandatory_clients, custom_props)
        self.n_clients = n_clients
        self.to_server(
            self._workflow(num_rounds, min_responses, round_timeout, validate_every_round)
        )
        if initial_model is not None:
            self.to_server(InitialModel(initial_model))

    def _workflow(
        self,
        num_rounds: int,
        min_responses: int | None,
        round_timeout: float | None,
        validate_every_round: bool,
    ) -> Workflow:
        return FedAvg(num_rounds, min_responses, round_timeout, validate_every_round)


class FedOptJob(FedAvgJob):
    """A :class:`FedJob` with the FedOpt workflow: FedAvgJob's arguments plus the server
    optimiser's (``serveropt``, ``learning_rate``, ``beta1``, ``beta2``, ``tau``)."""

    def __init__(
        self,
        name: str = "fed_job",
        n_clients: int | None = None,
        num_rounds: int = 1,
        initial_model: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        serveropt: str = "adam",
        learning_rate: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        self._optimizer: dict[str, Any] = {
            "serveropt": serveropt,
            "learning_rate": learning_rate,
            "beta1": beta1,
            "beta2": beta2,
            "tau": tau,
        }
        super().__init__(name, n_clients, num_rounds, initial_model, **kwargs)

    def _workflow(
        self,
        num_rounds: int,
        min_responses: int | None,
        round_timeout: float | None,
        validate_every_round: bool,
    ) -> Workflow:
        return FedOpt(
            num_rounds, min_responses, round_timeout, validate_every_round, **self._optimizer
        )


def _site(name: object) -> str:
    if not isinstance(name, str) or not SITE_NAME_RE.match(name) or name == SERVER:
        raise InvalidTarget(
            f"target {name!r} is neither 'server' nor a site name (letters, digits, '-', '_')",
            target=repr(name),
        )
    return name


def _replaceable(folder: Path) -> bool:
    """An earlier export (a folder with meta.json) or an empty folder may be replaced."""
    return (
        folder.is_dir()
        and not folder.is_symlink()
        and ((folder / META_FILE).is_file() or not any(folder.iterdir()))
    )
