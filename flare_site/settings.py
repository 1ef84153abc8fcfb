"""Site settings: the kit's ``local/settings.json`` and ``local/resources.json``, and flags.

``local/settings.json`` is read by the loader the server uses too
(:mod:`flare_protocol.settings_loader`): every setting of :class:`SiteSettings` declared
with ``setting`` may appear at the top level or under a ``"site"`` object (which wins);
durations in seconds may carry an ``_s`` suffix (``"stop_grace_s": 10``), nothing else
may. A key that is not a site setting is named in a warning, with the closest setting; a
value of the wrong type or out of bounds stops start-up with a line naming the file, the
key and the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_protocol.errors import KitError
from flare_protocol.kit import Kit
from flare_protocol.settings_loader import (
    check_settings,
    read_settings,
    setting,
    setting_metadata,
    unknown_setting_keys,
)

__all__ = ["SECTION", "SiteSettings", "load_site_settings"]

log = logging.getLogger("flare_site")

#: The object in settings.json whose keys win over the top level's.
SECTION = "site"
RESOURCES = "resources.json"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class SiteSettings:
    """How a site connects and what it runs (``local/settings.json``, resources, flags)."""

    server_address: str = dataclasses.field(metadata=setting_metadata())
    """``host:port`` of the server's site endpoint."""
    workspace: Path = dataclasses.field()
    """Site workspace: ``jobs/<job_id>/`` and ``logs/site.log`` live here (``--workspace``)."""
    max_jobs: int = 1
    """Jobs run at once (``max_concurrent_jobs`` in ``local/resources.json``)."""
    log_level: str = setting("INFO", choices=_LEVELS)
    """Level of ``workspace/logs/site.log``."""
    heartbeat_interval: float = setting(5.0, seconds=True)
    """Used only when the server's Register reply gives none."""
    heartbeat_timeout: float = setting(30.0, seconds=True)
    """Used only when the server's Register reply gives none."""
    connect_timeout: float = setting(10.0, seconds=True)
    """Seconds a Register may take before the attempt counts as failed."""
    reconnect_initial: float = setting(1.0, seconds=True)
    """First back-off delay after a failed or lost connection (seconds)."""
    reconnect_max: float = setting(30.0, seconds=True)
    """Longest back-off delay."""
    stop_grace: float = setting(10.0, seconds=True)
    """Seconds an idle Client API script gets to exit at ``job.end`` before its group is
    killed (a task still running then is killed at once)."""
    max_outbox: int = setting(10_000)
    """Outgoing messages kept while disconnected; the oldest are dropped beyond it."""
    transfer_timeout: float = setting(3600.0, seconds=True)
    """Seconds one blob download or upload may take."""
    python_env_builds: bool = setting(True)
    """Build the virtualenvs compute packages ask for (``python_env``); False: only those
    built already may be used, and a job needing another fails at once."""
    python_env_dir: str = setting("envs")
    """Where those virtualenvs live; relative to the workspace. Sites may share one."""
    python_env_pip_options: tuple[str, ...] = setting(())
    """Added to every ``pip install`` of an environment (index, find-links, proxy)."""
    python_env_system_site_packages: bool = setting(False)
    """Environments also see the packages installed for the site's own Python."""
    run_user_code_as: str | None = setting(None)
    """The OS user (name or uid) a job's user code runs as, for a site running as root:
    required then (``"root"`` allows root knowingly); otherwise unset, or the site's own
    user (:mod:`flare_site.user_account`, docs/security.md)."""

    def replace(self, **changes: Any) -> SiteSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # also: too many digits, too deep
        raise KitError(f"cannot read {path}: {exc}", path=str(path)) from None
    if not isinstance(data, dict):
        raise KitError(f"{path} must hold a JSON object", path=str(path))
    return data


def load_site_settings(
    kit: Kit,
    *,
    workspace: Path | None = None,
    server: str | None = None,
    max_jobs: int | None = None,
) -> SiteSettings:
    """Settings from the kit's ``local/`` folder; the arguments (CLI flags) win.

    A key that is not a site setting is named in a warning, with the closest setting.

    Raises:
        KitError: a setting has the wrong type or value, naming the file and key.
    """
    settings_path = kit.local / "settings.json"
    read = read_settings(SiteSettings, kit.settings, source=settings_path, section=SECTION)
    if read.unknown:
        log.warning(
            "%s: ignoring key(s) that are not site settings: %s",
            settings_path,
            ", ".join(unknown_setting_keys(read.unknown, SiteSettings, SECTION)),
        )
    values = dict(read.values)
    jobs = 1
    resources_path = kit.local / RESOURCES
    if resources_path.is_file():
        raw_jobs = _read_json_object(resources_path).get("max_concurrent_jobs", 1)
        if isinstance(raw_jobs, bool) or not isinstance(raw_jobs, int) or raw_jobs < 1:
            raise KitError(
                f"{resources_path}: 'max_concurrent_jobs' must be an integer >= 1, "
                f"got {raw_jobs!r}",
                path=str(resources_path),
            )
        jobs = raw_jobs
    if max_jobs is not None:
        if max_jobs < 1:
            raise KitError(f"--max-jobs must be at least 1, got {max_jobs}")
        jobs = max_jobs
    address = server or values.pop("server_address", None)
    address = address or kit.server_address(kit.server.fed_learn_port)
    if ":" not in address:
        raise KitError(f"server address {address!r} must be HOST:PORT")
    values["server_address"] = address
    settings = SiteSettings(
        workspace=Path(workspace) if workspace else kit.root / "workspace",
        max_jobs=jobs,
        **values,
    )
    check_settings(settings, source=settings_path)
    return settings
