"""FedOpt server optimisers adam, yogi, adagrad (Reddi et al. 2021, Adaptive Fed. Optimization).

Per round t, with x the global model and the num_examples-weighted mean of the sites'
full weights ``mean_t``:

    delta_t = mean_t - x_t                                   (pseudo-gradient, negated)
    m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
    adagrad: v_t = v_{t-1} + delta_t**2
    adam:    v_t = beta2 * v_{t-1} + (1 - beta2) * delta_t**2
    yogi:    v_t = v_{t-1} - (1 - beta2) * delta_t**2 * sign(v_{t-1} - delta_t**2)
    x_{t+1} = x_t + learning_rate * m_t / (sqrt(v_t) + tau)

with ``m_{-1} = 0`` and ``v_{-1} = tau**2`` (the paper's ``v_{-1} >= tau**2``), no bias
correction, all state in float64. Only float (and complex) arrays are optimised; integer and
bool arrays (step counters, masks) take the FedAvg mean, rounded. When a job has no
initial model, the first aggregation is plain FedAvg and the optimiser starts from it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flare_protocol.app_config import FedOptConfig
from flare_protocol.models import Params
from flare_server.workflows.aggregation import ModelUpdate, cast_like, fedavg, mean_full_model

__all__ = ["ServerOptimizer"]


class ServerOptimizer:
    """Holds the m and v state of one FedOpt job across rounds."""

    def __init__(self, config: FedOptConfig) -> None:
        self.config = config
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def aggregate(self, global_model: Params, updates: Mapping[str, ModelUpdate]) -> Params:
        """Apply one server step; returns the new global model in the global's dtypes."""
        if not global_model:
            return fedavg(global_model, updates)
        cfg = self.config
        means = mean_full_model(global_model, updates)
        new_model: Params = {}
        for name, mean in means.items():
            base = global_model[name]
            if base.dtype.kind not in "fc":
                new_model[name] = cast_like(mean, base.dtype)
                continue
            x = np.asarray(base, dtype=mean.dtype)
            delta = mean - x
            m = self.m.get(name, np.zeros_like(delta))
            v = self.v.get(name, np.full_like(delta, cfg.tau**2))
            m = cfg.beta1 * m + (1.0 - cfg.beta1) * delta
            sq = delta * np.conj(delta) if delta.dtype.kind == "c" else delta * delta
            if cfg.serveropt == "adagrad":
                v = v + sq
            elif cfg.serveropt == "adam":
                v = cfg.beta2 * v + (1.0 - cfg.beta2) * sq
            else:  # yogi
                v = v - (1.0 - cfg.beta2) * sq * np.sign(v - sq)
            self.m[name], self.v[name] = m, v
            new_model[name] = cast_like(
                x + cfg.learning_rate * m / (np.sqrt(v) + cfg.tau), base.dtype
            )
        return new_model
