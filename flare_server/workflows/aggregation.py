"""Pure aggregation: FedAvg of FULL and DIFF updates, weighted by ``num_examples``.

Every sum is accumulated in float64 (complex128 for complex arrays) whatever the arrays'
dtype, then cast back to the global model's dtype (integer and bool arrays are rounded to
the nearest value first), so float16/float32 models lose no precision to the order in
which sites answered. A DIFF update is first turned into full weights (``global + diff``),
so one round may mix FULL and DIFF senders; the result is then
``sum_i n_i * full_i / sum_i n_i``. Updates are checked against the global model first:
same array names, same shapes, and DIFF only when a global model exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flare_protocol.errors import InvalidModel
from flare_protocol.models import Params, ParamsType

__all__ = [
    "Allocator",
    "ModelUpdate",
    "accumulator_dtype",
    "cast_like",
    "check_update",
    "checked_names",
    "empty_array",
    "fedavg",
    "mean_slices",
    "weighted_mean",
]


@dataclass(frozen=True)
class ModelUpdate:
    """What one site sent for one round."""

    params: Params
    params_type: ParamsType
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params_type", ParamsType(self.params_type))

    @classmethod
    def from_result(cls, body: Mapping[str, object], params: Params, site: str) -> ModelUpdate:
        """Build an update from a site's ``task.result`` body (untrusted JSON) and its model.

        Raises:
            InvalidModel: naming the site and the bad field.
        """
        raw_type = body.get("params_type", "FULL")
        try:
            params_type = ParamsType(str(raw_type).upper())
        except ValueError:
            raise InvalidModel(
                f"{site}: params_type must be FULL or DIFF, got {raw_type!r}"
            ) from None
        num = body.get("num_examples")
        if isinstance(num, bool) or not isinstance(num, int) or num < 0:
            raise InvalidModel(f"{site}: num_examples must be an integer >= 0, got {num!r}")
        raw_metrics = body.get("metrics") or {}
        if not isinstance(raw_metrics, Mapping):
            raise InvalidModel(f"{site}: metrics must be an object of numbers")
        metrics: dict[str, float] = {}
        for key, value in raw_metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidModel(f"{site}: metric {key!r} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InvalidModel(f"{site}: metric {key!r} is {value}")
            metrics[str(key)] = float(value)
        return cls(params, params_type, num, metrics)


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """float64, or complex128 for complex arrays."""
    return np.dtype(np.complex128) if dtype.kind == "c" else np.dtype(np.float64)


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast an accumulator back to a model dtype, rounding for integer and bool arrays."""
    if dtype.kind in "biu":
        return np.rint(values.real).astype(dtype)
    return values.astype(dtype)


def check_update(global_model: Params, update: ModelUpdate, site: str) -> None:
    """Refuse an update that cannot be aggregated with ``global_model``.

    Raises:
        InvalidModel: naming the site and the array at fault.
    """
    if update.num_examples < 0:
        raise InvalidModel(f"{site}: num_examples must be >= 0, got {update.num_examples}")
    if not global_model:
        if update.params_type is ParamsType.DIFF:
            raise InvalidModel(
                f"{site} sent a DIFF update but there is no global model yet "
                "(send FULL weights in the first round, or give the job an initial_model)"
            )
        return
    expected, got = set(global_model), set(update.params)
    if expected != got:
        missing, extra = sorted(expected - got), sorted(got - expected)
        detail = "; ".join(
            part
            for part in (
                f"missing arrays {missing}" if missing else "",
                f"unknown arrays {extra}" if extra else "",
            )
            if part
        )
        raise InvalidModel(f"{site} sent an update that does not match the global model: {detail}")
    for name, array in update.params.items():
        if array.shape != global_model[name].shape:
            raise InvalidModel(
                f"{site} sent array {name!r} with shape {array.shape}, "
                f"the global model has {global_model[name].shape}"
            )


_SLICE = 1 << 20  # elements per step of weighted_mean (8 MiB of float64)


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i a_i / sum_i w_i`` in float64 (or complex128); the caller casts back."""
    total = float(sum(weights))
    if total <= 0:
        raise InvalidModel("cannot aggregate: the updates' num_examples add up to 0")
    acc = np.zeros(arrays[0].shape, dtype=accumulator_dtype(arrays[0].dtype))
    flat = acc.reshape(-1)
    # Slice by slice through one reused buffer: the same arithmetic per element as
    # ``acc += array.astype(acc.dtype) * w``, without two model-sized temporaries per
    # update (fresh memory is slow to touch; 100 MB models aggregate several times faster).
    buffer = np.empty(min(_SLICE, flat.size), dtype=acc.dtype)
    for array, weight in zip(arrays, weights, strict=True):
        src = np.asarray(array).reshape(-1)
        factor = weight / total
        for start in range(0, flat.size, _SLICE):
            stop = min(start + _SLICE, flat.size)
            part = buffer[: stop - start]
            np.copyto(part, src[start:stop], casting="unsafe")
            part *= factor
            flat[start:stop] += part
    return acc


def checked_names(global_model: Params, updates: Mapping[str, ModelUpdate]) -> list[str]:
    """Check every update (see :func:`check_update`); the names of the arrays to average."""
    if not updates:
        raise InvalidModel("cannot aggregate: no updates")
    for site, update in updates.items():
        check_update(global_model, update, site)
    reference = global_model or next(iter(updates.values())).params
    names = list(reference)
    if not global_model:
        for site, update in updates.items():
            if set(update.params) != set(names):
                raise InvalidModel(
                    f"{site} sent arrays {sorted(update.params)}, other sites sent {sorted(names)}"
                )
            for name in names:
                if update.params[name].shape != reference[name].shape:
                    raise InvalidModel(
                        f"{site} sent array {name!r} with shape {update.params[name].shape}, "
                        f"other sites sent {reference[name].shape}"
                    )
    return names


def mean_slices(
    global_model: Params, updates: Sequence[ModelUpdate], weights: Sequence[float], name: str
) -> Iterator[tuple[int, int, np.ndarray]]:
    """The weighted mean of array ``name`` as full weights, slice by slice, in float64.

    Yields ``(start, stop, values)`` over the flattened array; ``values`` (float64, or
    complex128) is reused for the next slice. Per element the same operations in the same
    order as :func:`weighted_mean` of the full arrays (bit-identical), but only slice-sized
    temporaries: no model-sized accumulator and no full-weights copy of a DIFF update.
    """
    total = float(sum(weights))
    if total <= 0:
        raise InvalidModel("cannot aggregate: the updates' num_examples add up to 0")
    first = updates[0]
    if first.params_type is ParamsType.DIFF:
        acc_dtype = accumulator_dtype(accumulator_dtype(global_model[name].dtype))
    else:
        acc_dtype = accumulator_dtype(first.params[name].dtype)
    sources: list[tuple[np.ndarray, np.ndarray | None, np.dtype | None, float]] = []
    for update, weight in zip(updates, weights, strict=True):
        src = np.asarray(update.params[name]).reshape(-1)
        if update.params_type is ParamsType.DIFF:
            base = np.asarray(global_model[name]).reshape(-1)
            sources.append((src, base, accumulator_dtype(base.dtype), weight / total))
        else:
            sources.append((src, None, None, weight / total))
    size = sources[0][0].size
    step = min(_SLICE, size)
    acc = np.empty(step, dtype=acc_dtype)
    buffer = np.empty(step, dtype=acc_dtype)
    for start in range(0, size, _SLICE):
        stop = min(start + _SLICE, size)
        chunk = acc[: stop - start]
        part = buffer[: stop - start]
        chunk.fill(0)
        for src, diff_base, base_acc, factor in sources:
            if diff_base is None:
                np.copyto(part, src[start:stop], casting="unsafe")
            else:
                full = np.asarray(diff_base[start:stop], dtype=base_acc) + np.asarray(
                    src[start:stop], dtype=base_acc
                )
                np.copyto(part, full, casting="unsafe")
            part *= factor
            chunk += part
        yield start, stop, chunk


def _mean_cast_into(
    out: np.ndarray,
    global_model: Params,
    updates: Sequence[ModelUpdate],
    weights: Sequence[float],
    name: str,
) -> None:
    """``cast_like(weighted_mean(full arrays), out.dtype)`` written into ``out``, slice by slice."""
    flat = out.reshape(-1)
    for start, stop, values in mean_slices(global_model, updates, weights, name):
        flat[start:stop] = cast_like(values, out.dtype)


#: Makes an empty array for a new model: ``(shape, dtype) -> array`` (np.empty by default).
Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]


def empty_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


def fedavg(
    global_model: Params, updates: Mapping[str, ModelUpdate], *, allocate: Allocator = empty_array
) -> Params:
    """Federated averaging of one round's updates (``site -> update``).

    Returns the new global model with the global model's dtypes (or the first update's,
    when there is no global model yet), its arrays made by ``allocate``.
    """
    names = checked_names(global_model, updates)
    reference = global_model or next(iter(updates.values())).params
    ordered = list(updates.values())
    weights = [float(u.num_examples) for u in ordered]
    model: Params = {}
    for name in names:
        out = allocate(reference[name].shape, reference[name].dtype)
        _mean_cast_into(out, global_model, ordered, weights, name)
        model[name] = out
    return model
