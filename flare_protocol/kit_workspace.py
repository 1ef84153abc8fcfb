"""A kit's default workspace, and refusing one that would hide an earlier kit's jobs.

The server and the sites keep their state in ``<kit>/workspace`` unless told otherwise
(``--workspace``, or ``"workspace"`` in the server's ``local/settings.json``). Every
``flare provision`` run writes its kits into a new ``prod_NN``, so starting from a
re-provisioned kit (``prod_01/localhost``) would silently open an empty workspace while the
jobs stay in ``prod_00/localhost/workspace``. :func:`check_default_workspace` refuses that
start: when the kit's own workspace holds no job yet and the same participant's kit in an
earlier ``prod_NN`` of the same project folder holds jobs, it raises a
:class:`~flare_protocol.errors.KitError` naming that workspace and the two ways on
(``--workspace OLD`` to keep using it, ``--new-workspace`` to start empty on purpose).

Both the server's job store and a site keep one folder per job, named by its id, under
``<workspace>/jobs/``; those folders are what is counted.
"""

from __future__ import annotations

import re
from pathlib import Path

from flare_protocol.errors import KitError

__all__ = [
    "WORKSPACE",
    "check_default_workspace",
    "count_jobs",
    "earlier_kits",
    "earlier_workspace",
]

#: The workspace folder inside a kit when none is given.
WORKSPACE = "workspace"

_PROD = re.compile(r"^prod_(\d+)$")
_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def count_jobs(workspace: Path) -> int:
    """Job folders (named by job id) in ``<workspace>/jobs``; 0 when there is none."""
    try:
        entries = list((Path(workspace) / "jobs").iterdir())
    except OSError:
        return 0
    return sum(1 for p in entries if _JOB_ID.match(p.name) and p.is_dir())


def earlier_kits(kit_root: Path) -> list[Path]:
    """The same participant's kits in the earlier ``prod_NN`` folders of the project,
    newest first; empty when the kit is not in a ``prod_NN``."""
    kit = Path(kit_root).resolve()
    prod = _PROD.match(kit.parent.name)
    if prod is None:
        return []
    number = int(prod.group(1))
    earlier: list[tuple[int, Path]] = []
    try:
        siblings = list(kit.parent.parent.iterdir())
    except OSError:
        return []
    for sibling in siblings:
        match = _PROD.match(sibling.name)
        if match is not None and int(match.group(1)) < number and (sibling / kit.name).is_dir():
            earlier.append((int(match.group(1)), sibling / kit.name))
    return [path for _, path in sorted(earlier, reverse=True)]


def earlier_workspace(kit_root: Path) -> tuple[Path, int] | None:
    """The workspace of this participant's kit in the newest earlier ``prod_NN`` that holds
    jobs, with their number; None when the kit is not in a ``prod_NN`` or none does."""
    for kit in earlier_kits(kit_root):
        jobs = count_jobs(kit / WORKSPACE)
        if jobs:
            return kit / WORKSPACE, jobs
    return None


def check_default_workspace(kit_root: Path, command: str) -> None:
    """Refuse to start ``kit_root`` on its own workspace when that would hide jobs.

    Args:
        kit_root: the kit being started, using its default workspace.
        command: how the user starts it (``"flare server start"``), for the message.

    Raises:
        KitError: the kit's workspace holds no job while an earlier kit's holds some.
    """
    kit = Path(kit_root).resolve()
    own = kit / WORKSPACE
    if count_jobs(own):
        return
    found = earlier_workspace(kit)
    if found is None:
        return
    old, jobs = found
    raise KitError(
        f"{kit} would start on a new, empty workspace, but the earlier kit {old.parent} "
        f"has {jobs} job(s) in its workspace: starting here would hide them.\n"
        f"  keep them:          {command} {kit} --workspace {old}\n"
        f"  start empty anyway: {command} {kit} --new-workspace\n"
        f"(or copy the new kit's startup/ files into {old.parent}/startup/ and start that kit)",
        path=str(own),
        earlier_workspace=str(old),
        jobs=jobs,
    )
