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

from collections.abc import Iterator, Mapping

import numpy as np

from flare_protocol.app_config import FedOptConfig
from flare_protocol.models import Params
from flare_server.workflows.aggregation import (
    Allocator,
    ModelUpdate,
    RunningMean,
    cast_like,
    empty_array,
)

__all__ = ["ServerOptimizer"]


class ServerOptimizer:
    """Holds the m and v state of one FedOpt job across rounds (float64, updated in place)."""

    def __init__(self, config: FedOptConfig) -> None:
        self.config = config
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def aggregate(
        self,
        global_model: Params,
        updates: Mapping[str, ModelUpdate],
        *,
        allocate: Allocator = empty_array,
    ) -> Params:
        """Apply one server step to ``updates``; returns the new global model in the
        global's dtypes (see :meth:`step`)."""
        mean = RunningMean(global_model, allocate=allocate)
        for site, update in updates.items():
            mean.add(site, update)
        return self.step(global_model, mean, allocate=allocate)

    def step(
        self, global_model: Params, mean: RunningMean, *, allocate: Allocator = empty_array
    ) -> Params:
        """Apply one server step from a round's mean; returns the new global model.

        Works slice by slice over each array: besides the new model (made by ``allocate``)
        and the m and v state, no model-sized temporaries.

        Raises:
            InvalidModel: the round has no usable updates.
        """
        if not global_model:
            return mean.result()
        new_model: Params = {}
        for name in mean.names:
            base = global_model[name]
            out = allocate(base.shape, base.dtype)
            flat_out = out.reshape(-1)
            if base.dtype.kind not in "fc":
                for start, stop, values in mean.slices(name):
                    flat_out[start:stop] = cast_like(values, base.dtype)
            else:
                self._step(name, np.asarray(base).reshape(-1), flat_out, mean.slices(name))
            new_model[name] = out
        return new_model

    def _step(
        self,
        name: str,
        base: np.ndarray,
        out: np.ndarray,
        slices: Iterator[tuple[int, int, np.ndarray]],
    ) -> None:
        cfg = self.config
        for start, stop, mean in slices:
            if name not in self.m:  # m_{-1} = 0, v_{-1} = tau**2, in the mean's dtype
                self.m[name] = np.zeros(base.size, dtype=mean.dtype)
                self.v[name] = np.full(base.size, cfg.tau**2, dtype=mean.dtype)
            m_all, v_all = self.m[name], self.v[name]
            x = np.asarray(base[start:stop], dtype=mean.dtype)
            delta = mean - x
            m = cfg.beta1 * m_all[start:stop] + (1.0 - cfg.beta1) * delta
            v = v_all[start:stop]
            sq = delta * np.conj(delta) if delta.dtype.kind == "c" else delta * delta
            if cfg.serveropt == "adagrad":
                v = v + sq
            elif cfg.serveropt == "adam":
                v = cfg.beta2 * v + (1.0 - cfg.beta2) * sq
            else:  # yogi
                v = v - (1.0 - cfg.beta2) * sq * np.sign(v - sq)
            m_all[start:stop], v_all[start:stop] = m, v
            out[start:stop] = cast_like(
                x + cfg.learning_rate * m / (np.sqrt(v) + cfg.tau), out.dtype
            )
