"""The project's sites, and refusing a job that names a site the project does not have.

Provisioning writes the project's sites into the server kit (``startup/participants.json``,
signed with the rest of ``startup/``). A job whose ``deploy_map``, ``mandatory_clients`` or
``resource_spec`` names another site, or whose ``min_clients`` exceeds the sites it could
run on, would wait as SUBMITTED forever: it is refused at submission (and at clone) with
an ``InvalidJobDefinition`` naming the unknown sites and listing the project's. A server
kit provisioned before the file existed has no list: the check is skipped (the server
logs a warning at start).

A site added to the project later (``flare provision`` again) connects with a certificate
the server already trusts; from then on it counts as known even before the server kit's
new ``participants.json`` is copied over and re-read (SIGHUP, as for revocations).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.job_format import ALL_SITES, META_FILE, SERVER_TARGET
from flare_protocol.kit import Kit, project_sites

__all__ = ["ProjectSites"]

log = logging.getLogger("flare_server")


class ProjectSites:
    """The site names a server was provisioned with (``None``: unknown, nothing checked)."""

    def __init__(
        self,
        project: str,
        names: tuple[str, ...] | None,
        connected: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.project = project
        self.names = names
        self._connected = connected

    @classmethod
    def for_kit(cls, kit: Kit, connected: Callable[[], Iterable[str]] = tuple) -> ProjectSites:
        """From the server kit's ``startup/participants.json`` (KitError if malformed);
        ``connected()`` names the sites connected now (they are known too)."""
        return cls(kit.project, project_sites(kit), connected)

    def reload(self, kit: Kit) -> None:
        """Re-read ``participants.json`` (SIGHUP); a malformed file keeps the list in force."""
        from flare_protocol.errors import KitError

        try:
            names = project_sites(kit)
        except KitError as exc:
            log.error("project sites not reloaded, the previous list stays in force: %s", exc)
            return
        if names is not None:
            self.names = names
            log.info("project sites reloaded: %s", ", ".join(names) or "none")

    def check_job(self, meta: Mapping[str, Any]) -> None:
        """Refuse a job that names sites outside the project or needs more than it has.

        Raises:
            InvalidJobDefinition: naming each unknown site and where, and the project's sites.
        """
        if self.names is None:
            return
        known = set(self.names) | set(self._connected())
        deploy_map = meta.get("deploy_map") or {}
        deployed = {
            str(t)
            for targets in deploy_map.values()
            for t in targets or ()
            if t not in (SERVER_TARGET, ALL_SITES)
        }
        mandatory = {str(s) for s in meta.get("mandatory_clients") or ()}
        resources = {str(s) for s in meta.get("resource_spec") or {}}
        where: dict[str, list[str]] = {}
        for field, names in (
            ("deploy_map", deployed),
            ("mandatory_clients", mandatory),
            ("resource_spec", resources),
        ):
            for name in names - known:
                where.setdefault(name, []).append(field)
        ours = f"the sites of project {self.project} are {', '.join(sorted(known)) or 'none'}"
        if where:
            shown = ", ".join(f"{s} ({', '.join(f)})" for s, f in sorted(where.items()))
            raise InvalidJobDefinition(
                f"{META_FILE}: names site(s) that are not in the project: {shown}; {ours}",
                path=META_FILE,
                sites=",".join(sorted(where)),
            )
        wants_all = any(ALL_SITES in (targets or ()) for targets in deploy_map.values())
        possible = known if wants_all or not deployed else deployed | mandatory
        min_clients = meta.get("min_clients") or 1
        if isinstance(min_clients, int) and min_clients > len(possible):
            raise InvalidJobDefinition(
                f"{META_FILE}: field 'min_clients' is {min_clients} but the job can run on at "
                f"most {len(possible)} site(s); {ours}",
                path=META_FILE,
            )
