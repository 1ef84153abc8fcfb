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
    "RunningMean",
    "check_update",
    "empty_array",
    "fedavg",
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
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                raise InvalidModel(f"{site}: metric {key!r} is beyond any float") from None
            if not math.isfinite(number):
                raise InvalidModel(f"{site}: metric {key!r} is {value}")
            metrics[str(key)] = number
        return cls(params, params_type, num, metrics)


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """float64, or complex128 for complex arrays."""
    return np.dtype(np.complex128) if dtype.kind == "c" else np.dtype(np.float64)


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast an accumulator back to a model dtype, rounding for integer and bool arrays."""
    if dtype.kind in "biu":
        rounded: np.ndarray = np.rint(values.real).astype(dtype)
        return rounded
    cast: np.ndarray = values.astype(dtype)
    return cast


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


_SLICE = 1 << 20  # elements per step of RunningMean (8 MiB of float64)


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i a_i / sum_i w_i`` in float64 (or complex128); the caller casts back.

    The reference arithmetic of :class:`RunningMean` (same operations in the same order).
    """
    total = float(sum(weights))
    if total <= 0:
        raise InvalidModel("cannot aggregate: the updates' num_examples add up to 0")
    acc = np.zeros(arrays[0].shape, dtype=accumulator_dtype(arrays[0].dtype))
    for array, weight in zip(arrays, weights, strict=True):
        acc += np.asarray(array).astype(acc.dtype) * weight
    return acc / total


#: Makes an empty array for a new model: ``(shape, dtype) -> array`` (np.empty by default).
Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]


def empty_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


class RunningMean:
    """The num_examples-weighted mean of one round's updates, accumulated as they arrive.

    :meth:`add` checks an update against the global model (or, without one, against the
    first update) and adds ``n_i * full_i`` into float64 (complex128) sums, slice by slice,
    so the update's arrays can be dropped right after: a round holds one set of sums
    (twice a float32 model) however many sites answer. The mean is ``sums / sum_i n_i``
    (:meth:`slices`, or :meth:`result` cast back to the model's dtypes). A DIFF update
    counts as ``global + diff``, so FULL and DIFF senders mix in one round.
    """

    def __init__(self, global_model: Params, *, allocate: Allocator = empty_array) -> None:
        self.global_model = global_model
        self.total = 0.0
        self.count = 0
        self._allocate = allocate
        self._sums: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._first = ""

    @property
    def names(self) -> list[str]:
        """The arrays being averaged (after the first :meth:`add`)."""
        return list(self._shapes)

    def dtype(self, name: str) -> np.dtype:
        """The dtype the mean of ``name`` is cast back to (the global model's)."""
        return self._dtypes[name]

    def add(self, site: str, update: ModelUpdate) -> None:
        """Add one site's update (checked first; nothing is added when it is refused).

        Raises:
            InvalidModel: naming the site and what does not fit.
        """
        check_update(self.global_model, update, site)
        if not self.count:
            self._start(site, update)
        elif not self.global_model:
            self._check_like_first(site, update)
        weight = float(update.num_examples)
        for name, sums in self._sums.items():
            src = np.asarray(update.params[name]).reshape(-1)
            base = None
            if update.params_type is ParamsType.DIFF:
                base = np.asarray(self.global_model[name]).reshape(-1)
            part = np.empty(min(_SLICE, sums.size), dtype=sums.dtype)
            for start in range(0, sums.size, _SLICE):
                stop = min(start + _SLICE, sums.size)
                chunk = part[: stop - start]
                if base is None:
                    np.copyto(chunk, src[start:stop], casting="unsafe")
                else:
                    np.add(
                        np.asarray(base[start:stop], dtype=sums.dtype),
                        np.asarray(src[start:stop], dtype=sums.dtype),
                        out=chunk,
                    )
                chunk *= weight
                sums[start:stop] += chunk
        self.total += weight
        self.count += 1

    def slices(self, name: str) -> Iterator[tuple[int, int, np.ndarray]]:
        """The mean of array ``name`` over the flattened array, slice by slice.

        Yields ``(start, stop, values)``; ``values`` (float64 or complex128) is reused for
        the next slice.

        Raises:
            InvalidModel: no update was added, or their num_examples add up to 0.
        """
        self._check_total()
        sums = self._sums[name]
        out = np.empty(min(_SLICE, sums.size), dtype=sums.dtype)
        for start in range(0, sums.size, _SLICE):
            stop = min(start + _SLICE, sums.size)
            values = out[: stop - start]
            np.divide(sums[start:stop], self.total, out=values)
            yield start, stop, values

    def result(self) -> Params:
        """The FedAvg model: the mean cast back to the model's dtypes (integer arrays
        rounded), in arrays made by ``allocate``."""
        self._check_total()
        model: Params = {}
        for name, shape in self._shapes.items():
            out = self._allocate(shape, self._dtypes[name])
            flat = out.reshape(-1)
            for start, stop, values in self.slices(name):
                flat[start:stop] = cast_like(values, out.dtype)
            model[name] = out
        return model

    def _check_total(self) -> None:
        if not self.count:
            raise InvalidModel("cannot aggregate: no updates")
        if self.total <= 0:
            raise InvalidModel("cannot aggregate: the updates' num_examples add up to 0")

    def _start(self, site: str, update: ModelUpdate) -> None:
        reference = self.global_model or update.params
        self._first = site
        for name, array in reference.items():
            kinds = {array.dtype.kind, update.params[name].dtype.kind}
            acc = np.dtype(np.complex128) if "c" in kinds else np.dtype(np.float64)
            self._shapes[name] = array.shape
            self._dtypes[name] = array.dtype
            sums = self._allocate((array.size,), acc)
            sums.fill(0)
            self._sums[name] = sums

    def _check_like_first(self, site: str, update: ModelUpdate) -> None:
        if set(update.params) != set(self._shapes):
            raise InvalidModel(
                f"{site} sent arrays {sorted(update.params)}, "
                f"{self._first} sent {sorted(self._shapes)}"
            )
        for name, shape in self._shapes.items():
            if update.params[name].shape != shape:
                raise InvalidModel(
                    f"{site} sent array {name!r} with shape {update.params[name].shape}, "
                    f"{self._first} sent {shape}"
                )


def fedavg(
    global_model: Params, updates: Mapping[str, ModelUpdate], *, allocate: Allocator = empty_array
) -> Params:
    """Federated averaging of one round's updates (``site -> update``).

    Returns the new global model with the global model's dtypes (or the first update's,
    when there is no global model yet), its arrays made by ``allocate``.

    Raises:
        InvalidModel: no updates, an update that does not fit, num_examples adding up to 0.
    """
    mean = RunningMean(global_model, allocate=allocate)
    for site, update in updates.items():
        mean.add(site, update)
    return mean.result()
