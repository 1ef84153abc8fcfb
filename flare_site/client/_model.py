"""FLModel: what a training script receives and sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flare_protocol.models import ParamsType

__all__ = ["FLModel", "ParamsType"]


@dataclass
class FLModel:
    """A model plus what the round is about.

    Attributes:
        params: array name -> numpy array (the global model when received, your
            weights or weight changes when sent). Empty for a validation result.
        params_type: ``"FULL"`` (the weights) or ``"DIFF"`` (new weights minus the
            received ones; the server adds the weighted mean to the global model).
        metrics: scalar results to report with this model (e.g. validation accuracy).
        meta: extra information; a training result must carry ``num_examples``.
        current_round: the round being run, from 1.
        total_rounds: the job's number of rounds.
    """

    params: dict[str, np.ndarray] = field(default_factory=dict)
    params_type: ParamsType | str = ParamsType.FULL
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    current_round: int | None = None
    total_rounds: int | None = None
