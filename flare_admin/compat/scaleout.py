"""Scaleout Edge / FEDn's ``APIClient``, answered from an admin Session.

    from flare_admin import new_secure_session
    from flare_admin.compat.scaleout import APIClient

    client = APIClient(new_secure_session("admin@org_a.com", "prod_00/admin@org_a.com"))
    client.get_models()["result"][0]["model_id"]          # '<job_id>:<round>'
    client.start_session("again", rounds=3, aggregator="fedopt", model_id=...,
                         package="my-package/client")

What maps to what (docs/coming-from.md has the table):

* a Scaleout **session** is a job (``session_id`` = job id);
* a **model** is the global model a job produced in one round: its id is
  ``"<job_id>:<round>"`` (round 1-based), stable for the job's life. A job's final model
  is its last round's model. The parent of ``J:r`` is ``J:r-1``; the parent of ``J:1``
  is the model ``J`` started from: the final model of its ``initial_model_job_id``, or
  the model :meth:`APIClient.start_session` gave it (kept in its meta's
  ``custom_props``), else none;
* a **validation** is one site's validation of one round's model;
* a **client** is a connected site; the **controller** is the server.

Replies keep Scaleout's shapes: lists are ``{"count": n, "result": [...]}`` and entities
are plain dicts. Failures raise the Session's typed exceptions (Scaleout returns
``{"success": False}``). Nothing here talks to the network except through the Session.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flare_job import FedAvgJob, FedOptJob, InitialModel, PackageRunner
from flare_protocol.errors import InvalidArgumentError, JobNotDone
from flare_protocol.known_keys import unknown_keys

__all__ = ["APIClient", "model_id_of", "parse_model_id"]

_MODEL_ID = re.compile(r"^([0-9a-fA-F-]{36}):([1-9][0-9]*)$")
_FEDOPT_KWARGS = frozenset({"serveropt", "learning_rate", "beta1", "beta2", "tau"})
_RUNNING = ("SUBMITTED", "DISPATCHED", "RUNNING")
#: The ``custom_props`` key where start_session records the model a job starts from.
_PARENT_PROP = "scaleout_parent_model"


def model_id_of(job_id: str, round_number: int) -> str:
    """The id of job ``job_id``'s global model after round ``round_number``."""
    return f"{job_id}:{round_number}"


def parse_model_id(value: object) -> tuple[str, int]:
    """``"<job_id>:<round>"`` -> (job_id, round).

    Raises:
        InvalidArgumentError: not a model id of this view.
    """
    match = _MODEL_ID.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgumentError(
            f"model id {value!r} is malformed: model ids are '<job_id>:<round>', as "
            "get_models() lists them"
        )
    return match.group(1).lower(), int(match.group(2))


def _listing(items: list[dict[str, Any]], n_max: int | None) -> dict[str, Any]:
    return {"count": len(items), "result": items[:n_max] if n_max else items}


def _session_status(status: str) -> str:
    if status.startswith("FINISHED"):
        return "Finished"
    return "Created" if status == "SUBMITTED" else "Started"


class APIClient:
    """Scaleout's APIClient read calls, ``download_model`` and ``start_session`` over a
    :class:`~flare_admin.Session` (which stays the caller's to close).

    Args:
        session: an open admin Session.
        package: the default package for :meth:`start_session` (an app folder with
            ``scaleout.yaml`` or ``config/config_fed_client.json``);
            :meth:`set_active_package` sets it too.
    """

    def __init__(self, session: Any, package: str | os.PathLike[str] | None = None) -> None:
        self.session = session
        self.package: Path | None = None
        if package is not None:
            self.set_active_package(package)

    # -- sessions (= jobs) ------------------------------------------------------------------

    def _metas(self) -> list[Any]:
        """Every job's meta, newest first."""
        return list(self.session.list_jobs(detailed=True, reverse=True))

    def _summary(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        if not str(meta.get("status", "")).startswith("FINISHED"):
            return {}
        try:
            return dict(self.session.get_job_summary(meta["job_id"]))
        except JobNotDone:  # finished a moment ago; its summary is being written
            return {}

    def _session(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        summary = self._summary(meta)
        config: dict[str, Any] = {
            "aggregator": summary.get("workflow"),
            "rounds": summary.get("num_rounds"),
            "clients_required": meta.get("min_clients"),
            "model_id": self._start_model_id(meta),
        }
        status = str(meta.get("status", ""))
        return {
            "session_id": meta["job_id"],
            "name": meta.get("name"),
            "status": _session_status(status),
            "flare_status": status,
            "committed_at": meta.get("submit_time_iso") or None,
            "rounds_completed": int(meta.get("rounds_completed") or 0),
            "session_config": config,
        }

    def get_sessions(self, n_max: int | None = None) -> dict[str, Any]:
        """Every job as a session, newest first."""
        metas = self._metas()[:n_max] if n_max else self._metas()
        return _listing([self._session(m) for m in metas], None)

    def get_session(self, id: str) -> dict[str, Any]:  # noqa: A002 - Scaleout's name
        """One job as a session."""
        return self._session(self.session.get_job_meta(id))

    def get_session_status(self, id: str) -> str:  # noqa: A002
        """``"Created"``, ``"Started"`` or ``"Finished"``."""
        return _session_status(str(self.session.get_job_meta(id).status))

    def session_is_finished(self, id: str) -> bool:  # noqa: A002
        """True once the job has ended (whatever its outcome)."""
        return self.get_session_status(id) == "Finished"

    # -- models -----------------------------------------------------------------------------

    def _start_model_id(self, meta: Mapping[str, Any]) -> str | None:
        """The model a job started from: another job's final model (``initial_model_job_id``)
        or the round model :meth:`start_session` put in the job (its ``custom_props``)."""
        source = meta.get("initial_model_job_id")
        if source:
            return self._final_model_id(source)
        props = meta.get("custom_props")
        parent = props.get(_PARENT_PROP) if isinstance(props, Mapping) else None
        return parent if isinstance(parent, str) and _MODEL_ID.match(parent) else None

    def _final_model_id(self, job_id: str) -> str | None:
        rounds = int(self.session.get_job_meta(job_id).get("rounds_completed") or 0)
        return model_id_of(job_id, rounds) if rounds else None

    def _models_of(self, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The job's round models, newest first."""
        job = meta["job_id"]
        rounds = int(meta.get("rounds_completed") or 0)
        first_parent = self._start_model_id(meta) if rounds else None
        out = []
        for r in range(rounds, 0, -1):
            out.append(
                {
                    "id": model_id_of(job, r),
                    "model_id": model_id_of(job, r),
                    "model": model_id_of(job, r),
                    "parent_model": model_id_of(job, r - 1) if r > 1 else first_parent,
                    "session_id": job,
                    "round": r,
                    "name": f"{meta.get('name')} round {r}",
                    "final": r == rounds and str(meta.get("status")) == "FINISHED:COMPLETED",
                }
            )
        return out

    def get_models(self, session_id: str | None = None, n_max: int | None = None) -> dict[str, Any]:
        """Every round's global model of every job (or of ``session_id``), newest first."""
        metas = [self.session.get_job_meta(session_id)] if session_id else self._metas()
        models = [m for meta in metas for m in self._models_of(meta)]
        return _listing(models, n_max)

    def get_model(self, id: str) -> dict[str, Any]:  # noqa: A002
        """One model by id.

        Raises:
            InvalidArgumentError: a malformed id, or a round the job has not completed.
        """
        job, rnd = parse_model_id(id)
        meta = self.session.get_job_meta(job)
        for model in self._models_of(meta):
            if model["round"] == rnd:
                return model
        raise InvalidArgumentError(
            f"model {id!r} does not exist: job {job} completed "
            f"{int(meta.get('rounds_completed') or 0)} round(s)"
        )

    def get_active_model(self) -> dict[str, Any]:
        """The newest model of any job, or ``{}`` when there is none."""
        for meta in self._metas():
            models = self._models_of(meta)
            if models:
                return models[0]
        return {}

    def get_model_trail(
        self,
        id: str | None = None,  # noqa: A002
        include_self: bool = True,
        reverse: bool = True,
        n_max: int | None = None,
    ) -> list[dict[str, Any]]:
        """The models that led to ``id`` (default: the newest model), across jobs that
        started from another job's model. ``reverse=True`` lists them oldest first (the
        seed's successor first, ``id`` last), ``reverse=False`` newest first."""
        start = self.get_model(id) if id else self.get_active_model()
        trail = [start] if start and include_self else []
        parent = start.get("parent_model") if start else None
        while parent:
            model = self.get_model(parent)
            trail.append(model)
            parent = model["parent_model"]
        trail = trail[:n_max] if n_max else trail
        return trail[::-1] if reverse else trail

    def download_model(self, id: str, path: str | os.PathLike[str]) -> dict[str, Any]:  # noqa: A002
        """Save model ``id`` as ``.npz`` at ``path``.

        Raises:
            InvalidArgumentError: a malformed id or an unknown round.
        """
        job, rnd = parse_model_id(id)
        saved = self.session.download_model(job, os.fspath(path), round=rnd)
        return {"success": True, "message": "Model downloaded successfully.", "path": saved}

    # -- validations, rounds, clients, controller -------------------------------------------

    def get_validations(
        self,
        session_id: str | None = None,
        model_id: str | None = None,
        sender_name: str | None = None,
        n_max: int | None = None,
        **_filters: Any,
    ) -> dict[str, Any]:
        """Sites' validations of models, newest job first; filter by ``session_id``,
        ``model_id`` or ``sender_name`` (a site). Each has ``data`` (the metrics as a JSON
        string, as Scaleout stores them) and ``metrics`` (the same as a dict)."""
        rnd: int | None = None
        if model_id is not None:
            session_id, rnd = parse_model_id(model_id)
        jobs = [session_id] if session_id else [m["job_id"] for m in self._metas()]
        out = []
        for job in jobs:
            for row in self.session.get_validations(job, site=sender_name):
                if rnd is not None and row.round != rnd:
                    continue
                mid = model_id_of(job, row.round)
                out.append(
                    {
                        "id": f"{mid}:{row.site}",
                        "model_id": mid,
                        "session_id": job,
                        "round": row.round,
                        "data": json.dumps(dict(row.metrics)),
                        "metrics": dict(row.metrics),
                        "sender": {"name": row.site, "role": "client"},
                        "receiver": {"name": "server", "role": "combiner"},
                    }
                )
        return _listing(out, n_max)

    def get_rounds(self, session_id: str | None = None, n_max: int | None = None) -> dict[str, Any]:
        """Every aggregated round (of ``session_id``), newest first; ``round_data`` holds
        the participants (site -> num_examples) once the job's summary exists."""
        metas = [self.session.get_job_meta(session_id)] if session_id else self._metas()
        out = []
        for meta in metas:
            summary = self._summary(meta)
            details = {r.get("round"): r for r in summary.get("rounds", ()) if isinstance(r, dict)}
            for model in self._models_of(meta):
                rnd = model["round"]
                out.append(
                    {
                        "round_id": model["id"],
                        "round": rnd,
                        "session_id": meta["job_id"],
                        "model_id": model["id"],
                        "status": "Success",
                        "round_data": {
                            k: v for k, v in details.get(rnd, {}).items() if k != "round"
                        },
                    }
                )
        return _listing(out, n_max)

    def get_clients(self, n_max: int | None = None) -> dict[str, Any]:
        """The connected sites (``status`` ``"online"``)."""
        sites = [
            {
                "client_id": s.name,
                "name": s.name,
                "org": s.org,
                "status": "online",
                "last_seen": s.last_connect_time,
                "running_jobs": list(s.running_jobs),
            }
            for s in self.session.get_connected_client_list()
        ]
        return _listing(sites, n_max)

    def get_controller_status(self) -> dict[str, Any]:
        """``{"state": "instructing" | "idle", "sessions": [running job ids]}``."""
        running = [j["job_id"] for j in self.session.list_jobs() if str(j["status"]) in _RUNNING]
        return {"state": "instructing" if running else "idle", "sessions": running}

    # -- packages and new sessions ----------------------------------------------------------

    def set_active_package(
        self,
        path: str | os.PathLike[str],
        helper: str = "numpyhelper",
        name: str | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        """Use the app folder ``path`` for later :meth:`start_session` calls (kept in this
        object: each job carries its own package, the server stores none)."""
        _numpy_helper(helper)
        self.package = PackageRunner(path).path
        return {"success": True, "message": f"package {self.package} is active"}

    def get_active_package(self) -> dict[str, Any]:
        """``{"path": ...}`` of the active package, or ``{}``."""
        return {"path": str(self.package)} if self.package else {}

    def start_session(
        self,
        name: str | None = None,
        aggregator: str = "fedavg",
        aggregator_kwargs: Mapping[str, Any] | None = None,
        model_id: str | None = None,
        round_timeout: float = 180,
        rounds: int = 5,
        round_buffer_size: int = -1,
        delete_models: bool = True,
        validate: bool = True,
        helper: str = "numpyhelper",
        min_clients: int = 1,
        requested_clients: int = 8,
        server_functions: Any = None,
        *,
        package: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """Build a job from the package (``package`` or the active one) with the Job API
        and submit it; the job starts from model ``model_id`` (None: the package's own
        start, an empty model in round 1).

        ``aggregator`` is ``"fedavg"`` or ``"fedopt"`` (``aggregator_kwargs``:
        ``serveropt``, ``learning_rate``, ``beta1``, ``beta2``, ``tau``). ``validate``:
        every site validates each round's model. ``round_buffer_size``,
        ``delete_models`` and ``requested_clients`` are accepted and have no effect here.

        Returns:
            ``{"success": True, "message", "session_id": job_id, "config"}``.
        Raises:
            InvalidArgumentError: no package, an unknown aggregator or kwarg, a helper other
                than numpyhelper, server functions (no user code runs on the server).
        """
        _numpy_helper(helper)
        if server_functions is not None:
            raise InvalidArgumentError(
                "server_functions are not supported: no user code runs on the server; "
                "use aggregator='fedavg' or 'fedopt' with aggregator_kwargs"
            )
        folder = PackageRunner(package).path if package is not None else self.package
        if folder is None:
            raise InvalidArgumentError(
                "no package: call set_active_package(path) or pass package=PATH (an app "
                "folder with scaleout.yaml or config/config_fed_client.json)"
            )
        kwargs = dict(aggregator_kwargs or {})
        job_name = name or f"{folder.name}-session"
        common: dict[str, Any] = {
            "custom_props": {_PARENT_PROP: model_id} if model_id else None,
            "min_clients": min_clients,
            "round_timeout": round_timeout,
            "validate_every_round": validate,
        }
        if aggregator == "fedavg":
            if kwargs:
                raise InvalidArgumentError(
                    f"aggregator 'fedavg' takes no aggregator_kwargs, got {sorted(kwargs)}"
                )
            job: FedAvgJob = FedAvgJob(job_name, num_rounds=rounds, **common)
        elif aggregator == "fedopt":
            unknown = unknown_keys(kwargs, _FEDOPT_KWARGS)
            if unknown:
                raise InvalidArgumentError(
                    f"aggregator_kwargs: unknown {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(_FEDOPT_KWARGS))}"
                )
            job = FedOptJob(job_name, num_rounds=rounds, **kwargs, **common)
        else:
            raise InvalidArgumentError(
                f"aggregator must be 'fedavg' or 'fedopt', got {aggregator!r}"
            )
        job.to_clients(PackageRunner(folder))
        start = self.get_model(model_id) if model_id is not None else None
        with tempfile.TemporaryDirectory(prefix="flare-scaleout-") as scratch:
            source_job = None
            if start is not None and start["final"]:
                source_job = start["session_id"]  # the server reads it, checking our right
            elif start is not None:  # an earlier round's model: the job carries a copy
                path = self.download_model(start["id"], Path(scratch, "initial.npz"))["path"]
                job.to_server(InitialModel(path))
            job_id = self.session.submit_job(job, initial_model_job_id=source_job)
        config = {
            "aggregator": aggregator,
            "aggregator_kwargs": kwargs,
            "rounds": rounds,
            "round_timeout": round_timeout,
            "model_id": model_id,
            "clients_required": min_clients,
            "validate": validate,
            "package": str(folder),
        }
        return {
            "success": True,
            "message": "Session started",
            "session_id": job_id,
            "config": config,
        }


def _numpy_helper(helper: str) -> None:
    if helper != "numpyhelper":
        raise InvalidArgumentError(
            f"helper {helper!r} is not supported: models here are numpy .npz archives "
            "(helper='numpyhelper')"
        )
