"""Records: what a Driver API message carries, with Flower's names and shapes.

Theory of operation. A message's content is a :class:`RecordSet` (Flower's ``RecordSet``,
renamed ``RecordDict`` in newer Flower: both names work here): a mapping of record names
to records of three kinds,

* :class:`ParametersRecord` (also ``ArrayRecord``): named numpy arrays (weights, updates,
  any numeric tensor). On the wire they are one ``.npz`` read with ``allow_pickle=False``;
* :class:`MetricsRecord` (also ``MetricRecord``): numbers and lists of numbers;
* :class:`ConfigsRecord` (also ``ConfigRecord``): JSON values (text, numbers, booleans,
  null, lists and objects of them).

``RecordSet.parameters_records`` / ``metrics_records`` / ``configs_records`` (and Flower's
newer ``array_records`` / ``metric_records`` / ``config_records``) are live views of the
records of one kind: ``rs.parameters_records["model"] = ParametersRecord(...)`` adds to
``rs``. Every value is checked when it is set, so a record that exists can travel:
arrays must be numeric (bool, integer, float, complex; never object arrays, which would
need pickle), numbers finite, configs JSON. :func:`encode_content` turns a record set into
a JSON manifest plus the arrays; :func:`decode_content` checks untrusted ones and builds
it back (:mod:`flare_protocol.message` puts them on the wire).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from flare_protocol.errors import InvalidArgumentError, MessageError

__all__ = [
    "Array",
    "ArrayRecord",
    "ConfigRecord",
    "ConfigsRecord",
    "Context",
    "MetricRecord",
    "MetricsRecord",
    "ParametersRecord",
    "Record",
    "RecordDict",
    "RecordSet",
    "decode_content",
    "encode_content",
]

#: Longest record, array, metric or config name.
MAX_NAME = 255
#: Most records in one record set, and most arrays in one message.
MAX_RECORDS = 10_000
MAX_ARRAYS = 100_000
#: Deepest nesting of a config value.
MAX_DEPTH = 32
#: bool, signed/unsigned integers, floats, complex: never object (pickle), bytes, str, void.
_NUMERIC_KINDS = frozenset("biufc")


def _name(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME
        or any(ord(c) < 32 or c == "\x7f" for c in value)
    ):
        raise InvalidArgumentError(
            f"{what} {value!r} is not allowed: use a string of 1-{MAX_NAME} characters "
            "without control characters"
        )
    return value


class Array:
    """One array, as Flower's ``Array``: build it from a numpy array, get it back with
    :meth:`numpy`. A :class:`ParametersRecord` stores numpy arrays and accepts these."""

    def __init__(self, ndarray: Any) -> None:
        self._array = np.asarray(ndarray)

    def numpy(self) -> np.ndarray:
        """The array."""
        return self._array

    @property
    def dtype(self) -> str:
        return str(self._array.dtype)

    @property
    def shape(self) -> list[int]:
        return list(self._array.shape)

    def __repr__(self) -> str:
        return f"Array(dtype={self.dtype}, shape={self.shape})"


def _ndarray(key: str, value: object) -> np.ndarray:
    if isinstance(value, Array):
        array = value.numpy()
    elif isinstance(value, np.ndarray):
        array = value
    elif hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        array = np.asarray(value.detach().cpu().numpy())
    elif isinstance(value, (bool, int, float, complex, np.generic, list, tuple)):
        array = np.asarray(value)
    else:
        raise InvalidArgumentError(
            f"array {key!r} is a {type(value).__name__}, not a numpy array "
            "(convert tensors with .detach().cpu().numpy())"
        )
    if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.fields is not None:
        raise InvalidArgumentError(
            f"array {key!r} has dtype {array.dtype}: only bool, integer, float and complex "
            "arrays can travel (object arrays would need pickle)"
        )
    return array


V = TypeVar("V")


class _Record(MutableMapping[str, V], Generic[V]):
    """A dict whose keys are names and whose values are checked when set."""

    KIND = ""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, V] = {}
        for key, value in (data or {}).items():
            self[key] = value

    def _check(self, key: str, value: Any) -> V:
        raise NotImplementedError

    def __setitem__(self, key: str, value: Any) -> None:
        _name(key, f"{self.KIND} name")
        self._data[key] = self._check(key, value)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._equal(other)

    def _equal(self, other: _Record[V]) -> bool:
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class ParametersRecord(_Record[np.ndarray]):
    """Named numpy arrays (Flower's ``ParametersRecord``, newer ``ArrayRecord``).

    Build it from a dict of arrays (numpy arrays, Flower ``Array``\\ s, torch tensors) or
    from a list of arrays (named ``"0"``, ``"1"``, ...), as Flower does.
    """

    KIND = "array"

    def __init__(
        self,
        arrays: Mapping[str, Any] | Iterable[Any] | None = None,
        *,
        keep_input: bool = True,
    ) -> None:
        if arrays is not None and not isinstance(arrays, Mapping):
            arrays = {str(i): a for i, a in enumerate(arrays)}
        super().__init__(arrays)
        if not keep_input and isinstance(arrays, dict):
            arrays.clear()

    def _check(self, key: str, value: Any) -> np.ndarray:
        return _ndarray(key, value)

    def _equal(self, other: _Record[np.ndarray]) -> bool:
        return self.keys() == other.keys() and all(
            self[k].dtype == other[k].dtype and np.array_equal(self[k], other[k]) for k in self
        )

    @classmethod
    def from_numpy_ndarrays(cls, ndarrays: Iterable[Any]) -> ParametersRecord:
        """A record of ``ndarrays`` named ``"0"``, ``"1"``, ... in order."""
        return cls(list(ndarrays))

    def to_numpy_ndarrays(self) -> list[np.ndarray]:
        """The arrays, in insertion order."""
        return list(self._data.values())

    def count_bytes(self) -> int:
        """Bytes of array data held."""
        return sum(int(a.nbytes) for a in self._data.values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{k!r}: {v.dtype}{list(v.shape)}" for k, v in self._data.items())
        return f"ParametersRecord({{{shown}}})"


def _number(key: str, value: object, what: str) -> int | float:
    if isinstance(value, np.generic) and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(
            f"{what} {key!r} must be a number or a list of numbers, got {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"{what} {key!r} is {value}: only finite numbers can travel")
    return value


MetricValue = int | float | list[int] | list[float]


class MetricsRecord(_Record[MetricValue]):
    """Numbers, and lists of numbers (Flower's ``MetricsRecord``, newer ``MetricRecord``)."""

    KIND = "metric"

    def _check(self, key: str, value: Any) -> MetricValue:
        if isinstance(value, np.ndarray) and value.ndim == 1:
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            return [_number(key, v, "metric") for v in value]
        return _number(key, value, "metric")


def _json_value(key: str, value: object, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(f"config {key!r} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"config {key!r} is {value}: only finite numbers can travel")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(key, v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"config {key!r}: object keys must be strings")
            out[k] = _json_value(key, v, depth + 1)
        return out
    hint = " (put bytes in a ParametersRecord as a uint8 array)" if isinstance(value, bytes) else ""
    raise InvalidArgumentError(
        f"config {key!r} must be a JSON value (text, number, bool, None, list, dict), "
        f"got {type(value).__name__}{hint}"
    )


class ConfigsRecord(_Record[Any]):
    """JSON values (Flower's ``ConfigsRecord``, newer ``ConfigRecord``)."""

    KIND = "config"

    def _check(self, key: str, value: Any) -> Any:
        return _json_value(key, value)


Record = ParametersRecord | MetricsRecord | ConfigsRecord
R = TypeVar("R", ParametersRecord, MetricsRecord, ConfigsRecord)


class _KindView(MutableMapping[str, R]):
    """The records of one kind in a record set (writes go to the record set)."""

    def __init__(self, owner: RecordSet, kind: type[R]) -> None:
        self._owner = owner
        self._kind: type[R] = kind

    def __getitem__(self, key: str) -> R:
        record = self._owner[key]
        if not isinstance(record, self._kind):
            raise KeyError(key)
        return record

    def __setitem__(self, key: str, value: R) -> None:
        if not isinstance(value, self._kind):
            raise InvalidArgumentError(
                f"record {key!r} must be a {self._kind.__name__}, got {type(value).__name__}"
            )
        self._owner[key] = value

    def __delitem__(self, key: str) -> None:
        self[key]  # noqa: B018 - a KeyError for a record of another kind
        del self._owner[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k, v in self._owner.items() if isinstance(v, self._kind))

    def __len__(self) -> int:
        return sum(1 for v in self._owner.values() if isinstance(v, self._kind))

    def __repr__(self) -> str:
        return repr(dict(self))


class RecordSet(MutableMapping[str, Record]):
    """A message's content: named records of the three kinds (Flower's ``RecordSet``,
    newer ``RecordDict``; see the module doc)."""

    def __init__(
        self,
        records: Mapping[str, Record] | None = None,
        *,
        parameters_records: Mapping[str, ParametersRecord] | None = None,
        metrics_records: Mapping[str, MetricsRecord] | None = None,
        configs_records: Mapping[str, ConfigsRecord] | None = None,
    ) -> None:
        self._records: dict[str, Record] = {}
        for group in (records, parameters_records, metrics_records, configs_records):
            for key, value in (group or {}).items():
                self[key] = value

    def __setitem__(self, key: str, value: Record) -> None:
        _name(key, "record name")
        if not isinstance(value, (ParametersRecord, MetricsRecord, ConfigsRecord)):
            raise InvalidArgumentError(
                f"record {key!r} must be a ParametersRecord, MetricsRecord or ConfigsRecord, "
                f"got {type(value).__name__}"
            )
        if key not in self._records and len(self._records) >= MAX_RECORDS:
            raise InvalidArgumentError(f"a record set holds at most {MAX_RECORDS} records")
        self._records[key] = value

    def __getitem__(self, key: str) -> Record:
        return self._records[key]

    def __delitem__(self, key: str) -> None:
        del self._records[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordSet):
            return NotImplemented
        return self._records == other._records

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordSet({self._records!r})"

    @property
    def parameters_records(self) -> MutableMapping[str, ParametersRecord]:
        """The parameters (array) records."""
        return _KindView(self, ParametersRecord)

    @property
    def metrics_records(self) -> MutableMapping[str, MetricsRecord]:
        """The metrics records."""
        return _KindView(self, MetricsRecord)

    @property
    def configs_records(self) -> MutableMapping[str, ConfigsRecord]:
        """The configs records."""
        return _KindView(self, ConfigsRecord)

    # Flower's newer names for the same views.
    array_records = parameters_records
    metric_records = metrics_records
    config_records = configs_records


# Flower's newer names.
ArrayRecord = ParametersRecord
MetricRecord = MetricsRecord
ConfigRecord = ConfigsRecord
RecordDict = RecordSet


@dataclass
class Context:
    """What a ServerApp's ``main`` or a ClientApp's handler is given besides the message
    (Flower's ``Context``). ``run_config`` comes from the job's config; ``state`` is kept
    between messages of one run on the side that holds it."""

    run_id: str = ""
    node_id: int = 0
    node_config: dict[str, Any] = field(default_factory=dict)
    state: RecordSet = field(default_factory=RecordSet)
    run_config: dict[str, Any] = field(default_factory=dict)


# -- the wire form ------------------------------------------------------------------------

_KINDS: dict[str, type[Record]] = {
    "parameters": ParametersRecord,
    "metrics": MetricsRecord,
    "configs": ConfigsRecord,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def array_key(index: int) -> str:
    """The ``.npz`` member name of the message's ``index``-th array (in manifest order)."""
    return f"a{index}"


def encode_content(content: RecordSet) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A record set as its JSON manifest and its arrays (``.npz`` member name -> array).

    The manifest lists the records in order; a parameters record names its arrays, whose
    values are the ``.npz`` members ``a0``, ``a1``, ... in that order.
    """
    records: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for name, record in content.items():
        kind = _KIND_OF[type(record)]
        if isinstance(record, ParametersRecord):
            names = list(record)
            for array in record.values():
                arrays[array_key(len(arrays))] = array
            records.append({"name": name, "type": kind, "arrays": names})
        else:
            records.append({"name": name, "type": kind, "values": dict(record)})
    if len(arrays) > MAX_ARRAYS:
        raise InvalidArgumentError(f"a message holds at most {MAX_ARRAYS} arrays")
    return {"records": records}, arrays


def array_count(manifest: Mapping[str, Any]) -> int:
    """How many arrays a (checked) manifest says its ``.npz`` holds."""
    return sum(len(r.get("arrays") or ()) for r in manifest.get("records") or ())


def decode_content(
    manifest: object, arrays: Mapping[str, np.ndarray] | None, *, where: str
) -> RecordSet:
    """A record set from an untrusted manifest and the arrays of its ``.npz``.

    Raises:
        MessageError: naming ``where`` and what is wrong (a key, a type, an array that the
            manifest names and the ``.npz`` lacks or the other way round).
    """
    arrays = arrays or {}
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("records"), list):
        raise MessageError(f"{where}: the content must be an object with a 'records' list")
    out = RecordSet()
    used = 0
    try:
        for entry in manifest["records"]:
            if not isinstance(entry, Mapping):
                raise MessageError(f"{where}: a record must be a JSON object")
            kind_name = entry.get("type")
            kind = _KINDS.get(kind_name) if isinstance(kind_name, str) else None
            name = _name(entry.get("name"), "record name")
            if kind is None:
                raise MessageError(
                    f"{where}: record {name!r} has type {entry.get('type')!r}; expected "
                    "parameters, metrics or configs"
                )
            if kind is ParametersRecord:
                names = entry.get("arrays")
                if not isinstance(names, list):
                    raise MessageError(f"{where}: record {name!r} must list its 'arrays'")
                record: Record = ParametersRecord()
                for array_name in names:
                    key = array_key(used)
                    if key not in arrays:
                        raise MessageError(
                            f"{where}: array {array_name!r} of record {name!r} is not in the "
                            "content's .npz"
                        )
                    record[array_name] = arrays[key]
                    used += 1
            else:
                values = entry.get("values")
                if not isinstance(values, Mapping):
                    raise MessageError(f"{where}: record {name!r} must hold 'values'")
                record = kind(values)
            if name in out:
                raise MessageError(f"{where}: record {name!r} appears twice")
            out[name] = record
    except InvalidArgumentError as exc:
        raise MessageError(f"{where}: {exc.message}") from None
    if used != len(arrays):
        raise MessageError(
            f"{where}: the content's .npz holds {len(arrays)} arrays, its records name {used}"
        )
    return out


def dumps(data: Mapping[str, Any]) -> str:
    """Compact JSON (NaN and infinity refused)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
