"""What a job's archive says the server must do: its apps, their configs, its first model.

:func:`make_plan` runs in a worker thread (extraction, zipping, model loading): it extracts
the stored archive with ``safe_extract``, parses the server app's config and each site
app's client config, zips each site app for deployment, and loads the initial model (the
app's, or another job's final model when ``initial_model_job_id`` is set, once the
submitter's right to it is checked again: :mod:`flare_server.model_source`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_protocol import errors
from flare_protocol.app_config import (
    SERVER_CONFIG,
    ServerConfig,
    client_config_json,
    folder_reader,
    parse_server_config,
)
from flare_protocol.hashing import sha256_file
from flare_protocol.models import Params, load_params
from flare_server.authz import Policy, Principal
from flare_server.jobs import JobRepository, safe_extract
from flare_server.model_source import authorize_model_source

__all__ = ["ALL_SITES", "SERVER_TARGET", "Plan", "make_plan", "zip_folder"]

SERVER_TARGET = "server"
ALL_SITES = "@ALL"


@dataclass(frozen=True)
class Plan:
    """What :func:`make_plan` found in the job's archive."""

    config: ServerConfig
    server_app: str
    site_apps: Mapping[str, str]  # site -> app name
    client_configs: Mapping[str, Any]  # app -> parsed client config JSON
    app_zips: Mapping[str, tuple[Path, str, int]]  # app -> (zip, sha256, size)
    initial_model: Params | None = field(repr=False)
    initial_source: str


def zip_folder(folder: Path, target: Path) -> tuple[str, int]:
    """Zip the content of ``folder`` (regular files only) into ``target``; (sha256, size)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    zf.write(path, path.relative_to(folder).as_posix())
    os.replace(tmp, target)
    return sha256_file(target)


def _targets_of(deploy_map: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    return [(str(app), [str(t) for t in (targets or [])]) for app, targets in deploy_map.items()]


def make_plan(
    store: JobRepository,
    policy: Policy,
    job_id: str,
    meta: Mapping[str, Any],
    sites: tuple[str, ...],
    work: Path,
) -> Plan:
    """Prepare ``job_id`` to run on ``sites`` in its work area ``work`` (blocking).

    Raises:
        FlareError: the job cannot run (its config, its apps, its initial model).
    """
    extracted = work / "job"
    safe_extract(store.job_archive(job_id), extracted, store.limits)
    deploy_map = _targets_of(meta.get("deploy_map") or {})
    server_apps = [a for a, t in deploy_map if SERVER_TARGET in t or ALL_SITES in t]
    if not server_apps:
        raise errors.InvalidJobDefinition("no app is deployed to the server (deploy_map)")
    server_app = server_apps[0]
    config = parse_server_config(
        (extracted / server_app / SERVER_CONFIG).read_bytes(),
        source=f"{server_app}/{SERVER_CONFIG}",
    )
    site_apps: dict[str, str] = {}
    for site in sites:
        for app, targets in deploy_map:
            if site in targets or ALL_SITES in targets:
                site_apps[site] = app
                break
    client_configs: dict[str, Any] = {}
    app_zips: dict[str, tuple[Path, str, int]] = {}
    for app in sorted(set(site_apps.values())):
        # None for a compute package: the site reads its scaleout.yaml from the app
        client_configs[app] = client_config_json(folder_reader(extracted / app))
        target = work / "apps" / f"{app}.zip"
        sha, size = zip_folder(extracted / app, target)
        app_zips[app] = (target, sha, size)
    initial: Params | None = None
    source = "none"
    model_job = meta.get("initial_model_job_id")
    if model_job:
        # Checked here, where the model is read: the submitter's right may have gone
        # since the job was submitted (a changed policy), or the source job with it.
        who = Principal.submitter_of(meta)
        try:
            path = authorize_model_source(store, policy, who, str(model_job))
        except errors.FlareError as exc:
            raise errors.FlareError(
                f"initial_model_job_id {model_job}: {exc.message}", job_id=job_id
            ) from exc
        initial = load_params(path)
        source = f"the final model of job {model_job}"
    elif config.initial_model:
        initial = load_params(extracted / server_app / config.initial_model)
        source = f"{server_app}/{config.initial_model}"
    return Plan(config, server_app, site_apps, client_configs, app_zips, initial, source)
