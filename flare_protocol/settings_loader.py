"""Settings files (``local/settings.json``) read into frozen dataclasses, the same way everywhere.

Theory of operation. A settings class is a frozen dataclass; each field a file may set is
declared with :func:`setting` (its type comes from the annotation: ``int``, ``float``,
``str``, ``bool``, ``Path``, ``tuple[str, ...]`` (a JSON list of strings), or one of them
``| None``). :func:`read_settings` turns the
JSON object of a settings file into checked field values, with these rules on every side
(server and site alike):

* a key is a field name; a duration in seconds (``setting(..., seconds=True)``) may also
  be spelled with an ``_s`` suffix (``"heartbeat_timeout_s": 30``), and no other setting
  takes a suffix; both spellings of one setting in one object are refused;
* an object named ``section`` (``"server"``, ``"site"``) may hold the same keys, and wins
  over the top level (one file can serve several components);
* ``bool`` is never a number; an ``int`` setting takes only integers, a ``float`` one any
  number; a ``Path`` takes a string; ``| None`` also takes ``null``; ``choices`` are
  matched without case and kept upper-case;
* numbers must be positive unless the field gives ``low`` (inclusive); ``high`` caps them;
* a bad value raises :class:`~flare_protocol.errors.KitError` naming the file, the key as
  written, the expected type and the value; a key that is not a setting is not an error:
  it comes back in ``unknown``, and :func:`unknown_setting_keys` names it with the closest
  setting (``'stop_grace_seconds' (did you mean 'stop_grace_s'?)``) for the caller's
  warning.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_protocol.errors import KitError
from flare_protocol.known_keys import unknown_keys

__all__ = [
    "SECONDS_SUFFIX",
    "SettingsFile",
    "check_settings",
    "read_settings",
    "setting",
    "setting_keys",
    "setting_metadata",
    "unknown_setting_keys",
]

#: The one unit suffix: seconds, on durations only.
SECONDS_SUFFIX = "_s"
_META = "flare_setting"


@dataclass(frozen=True)
class _Spec:
    seconds: bool
    low: float | None
    high: float | None
    choices: tuple[str, ...] | None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    seconds: bool = False,
    low: float | None = None,
    high: float | None = None,
    choices: Iterable[str] | None = None,
) -> Any:
    """A dataclass field that a settings file may set (see the module doc for the rules).

    Args:
        default: the value when the file does not set it (none: the field is required).
        seconds: a duration in seconds: may also be written ``<name>_s``.
        low: smallest allowed number (inclusive); without it numbers must be positive.
        high: largest allowed number (inclusive).
        choices: the allowed strings (matched without case, kept upper-case).
    """
    meta = setting_metadata(seconds=seconds, low=low, high=high, choices=choices)
    return dataclasses.field(default=default, metadata=meta)


def setting_metadata(
    *,
    seconds: bool = False,
    low: float | None = None,
    high: float | None = None,
    choices: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The ``metadata`` of a setting without a default, for ``dataclasses.field(metadata=...)``
    (type checkers see a required field only in a plain ``field()`` call)."""
    spec = _Spec(seconds, low, high, tuple(c.upper() for c in choices) if choices else None)
    return {_META: spec}


@dataclass(frozen=True)
class SettingsFile:
    """What one settings object held: checked ``values`` by field name, and ``unknown`` keys."""

    values: dict[str, Any]
    unknown: dict[str, Any]


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], _Spec, type, bool]]:
    """The settings of ``cls``: name -> (field, spec, base type, whether None is allowed)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if spec is None:
            continue
        kind, optional = hints[f.name], False
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
            (kind,) = [a for a in args if a is not type(None)]
            optional = True
        out[f.name] = (f, spec, kind, optional)
    return out


def setting_keys(cls: type, section: str | None = None) -> frozenset[str]:
    """Every key a settings file for ``cls`` may use (durations also with ``_s``)."""
    keys = set()
    for name, (_, spec, _, _) in _fields(cls).items():
        keys.add(name)
        if spec.seconds:
            keys.add(name + SECONDS_SUFFIX)
    if section:
        keys.add(section)
    return frozenset(keys)


def unknown_setting_keys(keys: Iterable[str], cls: type, section: str | None = None) -> list[str]:
    """One phrase per key that is not a setting of ``cls``, with the closest setting."""
    return unknown_keys(sorted(keys), setting_keys(cls, section))


def read_settings(
    cls: type, doc: Mapping[str, Any], *, source: str | os.PathLike[str], section: str | None = None
) -> SettingsFile:
    """The checked values of the settings ``doc`` sets, and the keys that are not settings.

    Raises:
        KitError: a value has the wrong type or is out of bounds, both spellings of one
            setting are given, or ``section`` is not an object; the message names the file
            (``source``) and the key.
    """
    known = _fields(cls)
    top = {k: v for k, v in doc.items() if k != section}
    layers: list[Mapping[str, Any]] = [top]
    if section and section in doc:
        nested = doc[section]
        if not isinstance(nested, Mapping):
            raise KitError(
                f"{source}: '{section}' must be an object of {section} settings, got {nested!r}",
                path=str(source),
                key=section,
            )
        layers.append(nested)  # the section wins: read last
    values: dict[str, Any] = {}
    unknown: dict[str, Any] = {}
    for layer in layers:
        seen: dict[str, str] = {}
        for key, value in layer.items():
            name = _setting_name(key, known)
            if name is None:
                unknown[key] = value
                continue
            if name in seen:
                raise KitError(
                    f"{source}: give '{seen[name]}' or '{key}', not both",
                    path=str(source),
                    key=key,
                )
            seen[name] = key
            values[name] = _check(known[name], key, value, source)
    return SettingsFile(values=values, unknown=unknown)


def check_settings(settings: Any, *, source: str | os.PathLike[str] = "settings") -> None:
    """Check every setting of a built settings object (values from flags and code too).

    Raises:
        KitError: naming ``source`` and the setting, as :func:`read_settings` does.
    """
    for name, entry in _fields(type(settings)).items():
        _check(entry, name, getattr(settings, name), source)


def _setting_name(key: str, known: Mapping[str, tuple[Any, _Spec, type, bool]]) -> str | None:
    if key in known:
        return key
    if key.endswith(SECONDS_SUFFIX):
        base = key[: -len(SECONDS_SUFFIX)]
        if base in known and known[base][1].seconds:
            return base
    return None


def _check(
    entry: tuple[dataclasses.Field[Any], _Spec, type, bool],
    key: str,
    value: Any,
    source: str | os.PathLike[str],
) -> Any:
    _, spec, kind, optional = entry

    def refuse(expected: str) -> KitError:
        return KitError(
            f"{source}: '{key}' must be {expected}, got {value!r}", path=str(source), key=key
        )

    if value is None and optional:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise refuse("true or false" + (" or null" if optional else ""))
        return value
    if kind in (int, float):
        number_ok = isinstance(value, int) or (kind is float and isinstance(value, float))
        if isinstance(value, bool) or not number_ok:
            what = "an integer" if kind is int else "a number"
            what += " of seconds" if spec.seconds else ""
            raise refuse(what + (" or null" if optional else ""))
        try:
            number = kind(value)
        except OverflowError:  # an integer beyond any float
            raise refuse("a number within the range of a float") from None
        if kind is float and not math.isfinite(number):  # NaN would pass every bound below
            raise refuse("a finite number")
        if spec.low is None and number <= 0:
            raise refuse("positive")
        if spec.low is not None and number < spec.low:
            raise refuse(f"at least {spec.low:g}" if spec.high is None else _range(spec))
        if spec.high is not None and number > spec.high:
            raise refuse(_range(spec))
        return number
    if kind is str:
        if not isinstance(value, str):
            raise refuse(_one_of(spec) if spec.choices else "a string")
        if spec.choices:
            if value.upper() not in spec.choices:
                raise refuse(_one_of(spec))
            return value.upper()
        return value
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a JSON list of strings
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise refuse("a list of strings")
        return tuple(value)
    if kind is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise refuse("a path string" + (" or null" if optional else ""))
        return Path(value)
    raise TypeError(f"setting {key!r}: unsupported type {kind!r}")  # a bug in the class


def _range(spec: _Spec) -> str:
    return f"in {spec.low:g}..{spec.high:g}"


def _one_of(spec: _Spec) -> str:
    assert spec.choices
    return "one of " + ", ".join(spec.choices)
