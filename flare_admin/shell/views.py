"""What shell commands return when a Session result alone does not say how to show it.

Each view holds typed data and gives ``to_dict()`` for ``--format json``; the renderer
(:mod:`flare_admin.shell.render`) turns it into rich renderables. Most commands return
the Session's own results unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flare_admin.results import MetricRow, ValidationRow

__all__ = [
    "Done",
    "MessagesView",
    "MetricsView",
    "ParamsView",
    "SessionView",
    "ValidationsView",
    "jsonable",
    "last_per_round",
]


def jsonable(value: Any) -> Any:
    """Any shell or Session result as plain JSON data (``to_dict()`` where there is one)."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a metric that was not a number
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, str):
        return str(value)
    return value


@dataclass(frozen=True)
class Done:
    """A command that changed something: one line for a person, data for a machine."""

    text: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.text, **jsonable(self.data)}


@dataclass(frozen=True)
class SessionView:
    """``whoami`` and ``info``: who we are and where we are connected."""

    name: str
    org: str
    role: str
    project: str
    server: str
    server_version: str
    kit: str = ""
    timeout: float | None = None
    full: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "org": self.org,
            "role": self.role,
            "project": self.project,
            "server": self.server,
            "server_version": self.server_version,
        }
        if self.full:
            data.update(kit=self.kit, timeout=self.timeout)
        return data


def last_per_round(rows: Iterable[MetricRow], key: str) -> dict[int, dict[str, float]]:
    """``{round: {site: last value of key}}``, rounds ascending (rows without a round
    left out): what a site reported for a round, its last step's value."""
    table: dict[int, dict[str, float]] = {}
    for row in rows:
        if row.key == key and row.round is not None:
            table.setdefault(row.round, {})[row.site] = row.value
    return {r: table[r] for r in sorted(table)}


@dataclass(frozen=True)
class _JobRows:
    """A job's rows of one kind (metrics, validations, params), as the Session gave them."""

    job_id: str
    rows: Sequence[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "rows": [r.to_dict() for r in self.rows]}


@dataclass(frozen=True)
class MetricsView(_JobRows):
    """A job's metrics: every row, and the key a plot should follow."""

    rows: Sequence[MetricRow]
    key: str | None = None
    site: str | None = None

    def keys(self) -> list[str]:
        """Metric names in first-seen order."""
        return list(dict.fromkeys(r.key for r in self.rows))

    def plotted_key(self) -> str | None:
        """The chosen key, else the first one logged per round (a loss, usually)."""
        if self.key:
            return self.key
        keys = [r.key for r in self.rows if r.round is not None]
        return keys[0] if keys else None

    def per_round(self, key: str) -> dict[int, dict[str, float]]:
        """``{round: {site: last value of key}}``, rounds ascending."""
        return last_per_round(self.rows, key)


@dataclass(frozen=True)
class ParamsView(_JobRows):
    """A job's params, tags and texts (strings the sites recorded)."""


@dataclass(frozen=True)
class MessagesView(_JobRows):
    """A driver job's message log: messages sent, replies, refused replies."""


@dataclass(frozen=True)
class ValidationsView(_JobRows):
    """A job's validation rows (each site's metrics of each round's global model)."""

    rows: Sequence[ValidationRow]
