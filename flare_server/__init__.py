"""The flare server: mutual-TLS admin and site endpoints over a durable job store.

Public API (imported lazily, so ``import flare_server.jobs`` stays light)::

    Server(kit, settings=None, *, launcher=None)   the server process (app.py)
    ServerState                                    its lifecycle (server_state.py)
    ServerSettings                                 settings from local/settings.json
    check_server_kit(kit)                          start-up checks of a server kit (server_kit.py)
    load_server_kit(kit_dir)                       load a server kit's config (server_kit.py)
    Policy, Right, Scope, DEFAULT_POLICY           authorization (authz.py)
    JobLauncher                                    the scheduling seam (scheduler.py)
    JobRunner                                      runs jobs on sites (job_runner/)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DEFAULT_POLICY",
    "JobLauncher",
    "JobRunner",
    "Policy",
    "Right",
    "Scope",
    "Server",
    "ServerSettings",
    "ServerState",
    "check_server_kit",
    "load_server_kit",
]

_WHERE = {
    "Server": "flare_server.app",
    "ServerState": "flare_server.server_state",
    "check_server_kit": "flare_server.server_kit",
    "load_server_kit": "flare_server.server_kit",
    "ServerSettings": "flare_server.settings",
    "Policy": "flare_server.authz",
    "Right": "flare_server.authz",
    "Scope": "flare_server.authz",
    "DEFAULT_POLICY": "flare_server.authz",
    "JobLauncher": "flare_server.scheduler",
    "JobRunner": "flare_server.job_runner",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'flare_server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
