"""Authorization: which role may do what, on whose jobs and which sites.

Theory of operation. A call is allowed when the caller's role grants the call's *right*
with a *scope* that covers the resource it touches. The default table follows NVIDIA
FLARE's default policy (rows are roles, columns are rights)::

    right            project_admin  org_admin  lead   member
    submit_job       any            none       any    none
    clone_job        any            none       own    none
    manage_job       any            org        own    none     abort, delete, reset_errors
    download_job     any            org        own    none     download_job_result and the
                                                               job's logs, errors, metrics,
                                                               validations, summary, model
    view             any            any        any    any      list, meta, watch, stats,
                                                               system info, sites
    operate          any            org        org    none     restart, shutdown, ...
    shell_commands   any            org        none   none     ls, cat, head, tail, grep, pwd

Scopes: ``any`` allows every resource; ``none`` allows nothing; ``own`` allows the jobs
the caller submitted (same name and org); ``org`` allows jobs submitted by the caller's
org and the sites of the caller's org. The server itself belongs to no org, so operating
or running shell commands on the server needs ``any``. Rights without a resource (a new
submission) are allowed by every scope but ``none``.

``<server kit>/local/authorization.json`` replaces the table. Its format::

    {"format": 1, "roles": {"project_admin": {"submit_job": "any", ...}, "org_admin": {...},
                            "lead": {...}, "member": {...}}}

Every role must list every right; anything unknown or missing stops start-up with a line
naming the file, the role and the right. Other top-level keys (``note``, ``rights``) are
ignored, so the ``authorization.json.default`` that provisioning writes can be copied to
``authorization.json`` and edited.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from flare_protocol.errors import AuthorizationError, KitError
from flare_protocol.identity import Role

POLICY_FORMAT = 1


class Right(str, enum.Enum):
    """A group of commands granted together."""

    SUBMIT_JOB = "submit_job"
    CLONE_JOB = "clone_job"
    MANAGE_JOB = "manage_job"
    DOWNLOAD_JOB = "download_job"
    VIEW = "view"
    OPERATE = "operate"
    SHELL_COMMANDS = "shell_commands"


class Scope(str, enum.Enum):
    """Which resources a granted right covers."""

    ANY = "any"
    ORG = "org"
    OWN = "own"
    NONE = "none"


_A, _O, _S, _N = Scope.ANY, Scope.ORG, Scope.OWN, Scope.NONE
_R = Right

DEFAULT_POLICY: Mapping[Role, Mapping[Right, Scope]] = MappingProxyType(
    {
        Role.PROJECT_ADMIN: MappingProxyType({r: _A for r in Right}),
        Role.ORG_ADMIN: MappingProxyType(
            {
                _R.SUBMIT_JOB: _N,
                _R.CLONE_JOB: _N,
                _R.MANAGE_JOB: _O,
                _R.DOWNLOAD_JOB: _O,
                _R.VIEW: _A,
                _R.OPERATE: _O,
                _R.SHELL_COMMANDS: _O,
            }
        ),
        Role.LEAD: MappingProxyType(
            {
                _R.SUBMIT_JOB: _A,
                _R.CLONE_JOB: _S,
                _R.MANAGE_JOB: _S,
                _R.DOWNLOAD_JOB: _S,
                _R.VIEW: _A,
                _R.OPERATE: _O,
                _R.SHELL_COMMANDS: _N,
            }
        ),
        Role.MEMBER: MappingProxyType({r: (_A if r is _R.VIEW else _N) for r in Right}),
    }
)
"""NVIDIA FLARE's default policy: role -> right -> scope."""


@dataclass(frozen=True)
class Resource:
    """What a call touches: a job (with its submitter), a site, the server, or nothing."""

    kind: str  # "job" | "site" | "server" | "none"
    label: str = ""
    owner_name: str | None = None
    owner_org: str | None = None

    @classmethod
    def job(cls, job_id: str, submitter_name: str, submitter_org: str) -> Resource:
        return cls("job", f"job {job_id}", submitter_name, submitter_org)

    @classmethod
    def site(cls, name: str, org: str | None) -> Resource:
        return cls("site", f"site {name}", None, org)

    @classmethod
    def server(cls) -> Resource:
        return cls("server", "the server")


NO_RESOURCE = Resource("none")


class Subject(Protocol):
    """Who acts: a caller's verified :class:`~flare_protocol.identity.Identity`, or a
    job's recorded submitter (:class:`Principal`)."""

    @property
    def name(self) -> str: ...

    @property
    def org(self) -> str: ...

    @property
    def role(self) -> Role | None: ...


@dataclass(frozen=True)
class Principal:
    """A job's submitter as the server recorded it (from their certificate, at submission).

    The server acts for the submitter after the call has ended (e.g. the job runner reading
    another job's model) and checks the submitter's rights then, under the policy in force.
    """

    name: str
    org: str
    role: Role | None

    @classmethod
    def submitter_of(cls, meta: Mapping[str, Any]) -> Principal:
        """The submitter recorded in a job's meta (an unknown role has no rights)."""
        try:
            role: Role | None = Role(str(meta.get("submitter_role")))
        except ValueError:
            role = None
        return cls(str(meta.get("submitter_name")), str(meta.get("submitter_org")), role)


class Policy:
    """A role x right table of scopes, and the one function that applies it."""

    def __init__(
        self, table: Mapping[Role, Mapping[Right, Scope]], source: str = "default"
    ) -> None:
        self.table = table
        self.source = source

    @classmethod
    def default(cls) -> Policy:
        return cls(DEFAULT_POLICY)

    @classmethod
    def for_kit(cls, local_dir: Path) -> Policy:
        """The kit's ``local/authorization.json`` if present, else the default table."""
        path = local_dir / "authorization.json"
        if not path.exists():
            return cls.default()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KitError(
                f"{path}: not readable JSON ({exc}); fix it or delete it to use the default policy",
                path=str(path),
            ) from exc
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "authorization.json") -> Policy:
        """Validate a policy document (see the module docstring); raises KitError."""

        def fail(why: str) -> KitError:
            return KitError(f"{source}: {why}", path=source)

        if not isinstance(data, dict):
            raise fail("must hold a JSON object")
        if data.get("format") != POLICY_FORMAT:
            raise fail(f"'format' must be {POLICY_FORMAT}, got {data.get('format')!r}")
        roles = data.get("roles")
        if not isinstance(roles, dict):
            raise fail("'roles' must be an object of role -> {right: scope}")
        table: dict[Role, Mapping[Right, Scope]] = {}
        for role_name, rights in roles.items():
            try:
                role = Role(role_name)
            except ValueError:
                known = ", ".join(r.value for r in Role)
                raise fail(f"unknown role {role_name!r} (known: {known})") from None
            if not isinstance(rights, dict):
                raise fail(f"role {role_name!r} must map rights to scopes")
            row: dict[Right, Scope] = {}
            for right_name, scope_name in rights.items():
                try:
                    right = Right(right_name)
                except ValueError:
                    known = ", ".join(r.value for r in Right)
                    raise fail(
                        f"role {role_name!r}: unknown right {right_name!r} (known: {known})"
                    ) from None
                try:
                    row[right] = Scope(scope_name)
                except ValueError:
                    raise fail(
                        f"role {role_name!r}, right {right_name!r}: unknown scope "
                        f"{scope_name!r} (any, org, own, none)"
                    ) from None
            missing = [r.value for r in Right if r not in row]
            if missing:
                raise fail(f"role {role_name!r} does not set {', '.join(missing)}")
            table[role] = MappingProxyType(row)
        missing_roles = [r.value for r in Role if r not in table]
        if missing_roles:
            raise fail(f"roles missing: {', '.join(missing_roles)}")
        return cls(MappingProxyType(table), source=source)

    @staticmethod
    def require_project_admin(identity: Subject, *, action: str) -> None:
        """Raise AuthorizationError unless ``identity`` is a ``project_admin``.

        For what the policy table cannot hand to another role (revoking certificates):
        ``authorization.json`` does not change it.
        """
        if identity.role is Role.PROJECT_ADMIN:
            return
        role = identity.role.value if identity.role else "no role"
        raise AuthorizationError(
            f"{identity.name} ({role}, {identity.org}) may not {action}: only a "
            "project_admin may; ask one of the project's admins",
            right="project_admin",
            user=identity.name,
        )

    def scope(self, identity: Subject, right: Right) -> Scope:
        if identity.role is None:
            return Scope.NONE
        return self.table[identity.role].get(right, Scope.NONE)

    def allows(self, identity: Subject, right: Right, resource: Resource = NO_RESOURCE) -> bool:
        """Whether ``identity`` holds ``right`` on ``resource``."""
        return self._decide(identity, right, resource) is None

    def require(
        self,
        identity: Subject,
        right: Right,
        resource: Resource = NO_RESOURCE,
        *,
        action: str,
        job_id: str | None = None,
    ) -> None:
        """Raise AuthorizationError (who, what, which resource, why) unless allowed."""
        why = self._decide(identity, right, resource)
        if why is None:
            return
        target = f" {resource.label}" if resource.label else ""
        role = identity.role.value if identity.role else "no role"
        raise AuthorizationError(
            f"{identity.name} ({role}, {identity.org}) may not {action}{target}: {why}",
            job_id=job_id,
            right=right.value,
            user=identity.name,
        )

    def _decide(self, identity: Subject, right: Right, resource: Resource) -> str | None:
        scope = self.scope(identity, right)
        role = identity.role.value if identity.role else "no role"
        if scope is Scope.ANY:
            return None
        if scope is Scope.NONE:
            return f"the {role} role has no {right.value} right"
        if resource.kind == "none":
            return None
        if scope is Scope.OWN:
            if resource.kind == "job" and (resource.owner_name, resource.owner_org) == (
                identity.name,
                identity.org,
            ):
                return None
            if resource.kind == "job":
                return f"the {role} role may {right.value} only its own jobs"
            return f"the {role} role may {right.value} only its own jobs, not {resource.label}"
        # Scope.ORG
        if resource.kind in ("job", "site") and resource.owner_org == identity.org:
            return None
        if resource.kind == "job":
            return f"the {role} role may {right.value} only jobs submitted by org {identity.org}"
        if resource.kind == "site":
            return f"the {role} role may {right.value} only sites of org {identity.org}"
        return f"the {role} role may {right.value} only sites of its own org, not {resource.label}"
