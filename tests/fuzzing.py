"""Hostile-input strategies shared by the property-based tests (``tests/*/test_fuzz_*.py``).

Random bytes rarely get past a parser's first check, so most strategies here start from a
*valid* input and change it the way an attacker or a broken peer would: flip, drop or
insert bytes, truncate, patch a length field to something huge (:func:`mutated_bytes`);
replace a JSON value with one of the wrong type, drop or add a key
(:func:`mutated_json`); JSON texts that break naive readers (:data:`hostile_json_texts`:
deep nesting, numbers of thousands of digits, ``NaN``, duplicate keys, invalid UTF-8);
path names that try to leave their folder (:data:`hostile_names`). The property every test
checks is the same: the parser returns, or raises one of our typed errors.
"""

from __future__ import annotations

import copy
import json
import struct
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

__all__ = [
    "fewer_examples",
    "hostile_json_texts",
    "hostile_names",
    "json_values",
    "mutated_bytes",
    "mutated_json",
    "odd_values",
]

#: Values of every JSON type (and some numbers JSON readers choke on), for "wrong type".
odd_values: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "..", "/etc/passwd", "a/../../b", "C:\\x", "\x00", "²", "-1", "1e999"]),
    st.lists(st.integers(), max_size=3),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)

#: Any JSON document (as Python values), leaves included.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

#: Entry and file names that must never be written where they point.
hostile_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "//server/share",
            "C:evil",
            "c:/windows",
            "a\\..\\b",
            "a//b",
            "./a",
            "a/./b",
            "a/",
            "nul\x00byte",
            "line\nbreak",
            "del\x7f",
            "x" * 1100,
            "a/" * 300 + "b",
            "META.JSON",
            "ＡＢＣ",
            "é/ü",
        ]
    ),
    st.text(alphabet=st.sampled_from("./\\:a\x00"), min_size=1, max_size=8),
)


def _json_text(value: Any) -> str:
    return json.dumps(value)


#: JSON texts (and near-JSON bytes) that trip careless readers.
hostile_json_texts: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from(
        [
            b"",
            b"{",
            b"[" * 50_000,
            b'{"a":' * 50_000,
            b"1" * 5000,
            b'{"a": ' + b"9" * 5000 + b"}",
            b'{"a": 1e999}',
            b'{"a": NaN}',
            b'{"a": -Infinity}',
            b'{"a": 1, "a": 2}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{}",
            b'{"a": "\xff"}',
            b'{"a": "\\ud800"}',
            b"null",
            b"[]",
            b'"text"',
            b"0",
        ]
    ),
    json_values.map(_json_text).map(str.encode),
    st.binary(max_size=64),
)


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes, *, max_mutations: int = 3) -> bytes:
    """``data`` with 1 to ``max_mutations`` hostile edits (flips, cuts, inserts, huge
    length fields, duplicated ranges)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(
            st.sampled_from(["flip", "set", "truncate", "insert", "delete", "u32", "u16", "dup"])
        )
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 32))]
        elif kind in ("u32", "u16") and len(out) >= 4:
            fmt = "<I" if kind == "u32" else "<H"
            at = min(at, len(out) - struct.calcsize(fmt))
            huge = 0xFFFFFFFF if kind == "u32" else 0xFFFF
            value = draw(st.sampled_from([0, 1, huge, huge - 1, huge // 2 + 1]))
            struct.pack_into(fmt, out, at, value)
        elif kind == "dup" and out:
            end = min(len(out), at + draw(st.integers(1, 64)))
            out[at:at] = out[at:end]
    return bytes(out)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (the root is ``()``)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated_json(draw: st.DrawFn, valid: Any, *, max_mutations: int = 2) -> Any:
    """A copy of the JSON value ``valid`` with 1 to ``max_mutations`` edits: a value of the
    wrong type, a key dropped, an unknown key added, or a hostile path name."""
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "drop", "add", "name"]))
        if not path:
            if kind == "replace" or not isinstance(doc, dict):
                doc = draw(odd_values)
            elif kind == "drop" and doc:
                del doc[draw(st.sampled_from(sorted(doc)))]
            else:
                doc[draw(st.text(max_size=12))] = draw(odd_values)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if kind == "replace":
            parent[last] = draw(odd_values)
        elif kind == "name":
            parent[last] = draw(hostile_names)
        elif kind == "drop" and isinstance(parent, dict):
            del parent[last]
        elif kind == "add" and isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=12))] = draw(odd_values)
        elif kind == "add" and isinstance(parent[last], list):
            parent[last].append(draw(odd_values))
        else:
            parent[last] = draw(odd_values)
    return doc


def fewer_examples(share: int = 4) -> settings:
    """Settings for a test whose examples do real I/O (folders, threads, event loops): a
    ``share``-th of the profile's examples (at least 10), so that it stays cheap in CI
    and still runs long under ``make fuzz``."""
    return settings(max_examples=max(10, settings().max_examples // share))
