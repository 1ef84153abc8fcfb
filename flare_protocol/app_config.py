"""Validation of a job's app configs (server workflow and client executor).

Seam: the job-format check calls :func:`validate_app` for every app of a job; the full
schema (FedAvg/FedOpt workflow, script/command executors) is filled in by the jobs issue.
"""

from __future__ import annotations

from collections.abc import Callable


def validate_app(
    app_name: str,
    read: Callable[[str], bytes | None],
    *,
    deployed_to_server: bool,
    deployed_to_sites: bool,
) -> None:
    """Check one app's config files; ``read(relpath)`` returns a file's bytes or None.

    Raises:
        InvalidJobDefinition: naming the file and field at fault.
    """
    return None
