"""What the server keeps per job: the model trail, the metrics log, the validation table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flare_protocol.models import Params

__all__ = ["MetricRow", "RoundRecord", "ValidationRecord"]


@dataclass(frozen=True)
class RoundRecord:
    """One aggregated round: the new global model and who contributed."""

    round: int
    global_model: Params = field(repr=False)
    #: site -> num_examples of the updates aggregated this round.
    contributors: Mapping[str, int]
    #: site -> "FULL" | "DIFF".
    params_types: Mapping[str, str]
    #: site -> the metrics sent with its update (``FLModel.metrics``).
    site_metrics: Mapping[str, Mapping[str, float]]
    #: active sites whose update had not arrived at the round timeout.
    late_sites: tuple[str, ...] = ()
    #: sites lost so far in the job.
    lost_sites: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationRecord:
    """A site's metrics for the global model of ``round``."""

    round: int
    site: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class MetricRow:
    """One row of the metrics log: (site, round, key, value, step, time)."""

    site: str
    round: int
    key: str
    value: float
    step: int | None
    time: float
