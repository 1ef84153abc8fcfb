"""Hostile ``.npz`` models for the property-based tests: valid models and the ways a peer
could bend one (damaged bytes, crafted ``.npy`` headers, pickled arrays, hostile member
names, compressed or encrypted members, sizes that lie)."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from hypothesis import example
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flare_protocol.models import Params, dump_params
from tests.fuzzing import hostile_names, mutated_bytes

__all__ = ["REGRESSIONS", "hostile_npz", "npy", "npz", "params", "with_regressions"]

array_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,20}", fullmatch=True)
numeric_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
)
#: A model: finite numeric arrays under allowed names.
params: st.SearchStrategy[Params] = st.dictionaries(
    array_names,
    hnp.arrays(
        numeric_dtypes,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements={"allow_nan": False, "allow_infinity": False},
    ),
    max_size=4,
)


def npy(header: str, data: bytes = b"", version: int = 1) -> bytes:
    """A ``.npy`` member with this header dict text (padded as numpy pads it)."""
    text = header.encode("latin1")
    if version == 1:
        pad = -(10 + len(text) + 1) % 64
        return (
            b"\x93NUMPY\x01\x00"
            + struct.pack("<H", len(text) + pad + 1)
            + text
            + b" " * pad
            + b"\n"
            + data
        )
    pad = -(12 + len(text) + 1) % 64
    return (
        b"\x93NUMPY\x02\x00"
        + struct.pack("<I", len(text) + pad + 1)
        + text
        + b" " * pad
        + b"\n"
        + data
    )


def npz(members: list[tuple[str, bytes]], *, compress: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of these members (names used verbatim)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compress) as archive:
        warnings.simplefilter("ignore")  # duplicate names are sent on purpose
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compress)
    return buffer.getvalue()


def _pickled() -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return out.getvalue()


_HEADERS = st.sampled_from(
    [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2**64,), }",
        "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 0, 5), }",
        "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '<U4', 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '|V8', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '|S0', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': [('a', '<i4'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '<M8[s]', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': 'x', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f8', 'fortran_order': 'yes', 'shape': (2,), }",
        "{'descr': '<f8', 'shape': (2,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': [2], }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1e3,), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': ('2',), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), ",
        "[1, 2]",
        "__import__('os')",
        "{'descr': '<f8', 'fortran_order': False, 'shape': ("
        + "(" * 200
        + "2"
        + ")" * 200
        + ",), }",
        "",
    ]
)


@st.composite
def hostile_npz(draw: st.DrawFn) -> bytes:
    """A model a hostile peer could send: a valid one bent, or one built to mislead."""
    kind = draw(st.sampled_from(["mutated", "header", "pickle", "name", "method", "many"]))
    valid = dump_params(draw(params), compress=draw(st.booleans()))
    if kind == "mutated":
        return draw(mutated_bytes(valid))
    if kind == "header":
        data = draw(st.binary(max_size=32))
        member = npy(draw(_HEADERS), data, version=draw(st.sampled_from([1, 2])))
        if draw(st.booleans()):
            member = draw(mutated_bytes(member))
        return npz([("w.npy", member)], compress=draw(st.sampled_from([0, 8])))
    if kind == "pickle":
        return npz([("w.npy", _pickled())])
    if kind == "name":
        name = draw(st.one_of(hostile_names, array_names))
        suffix = draw(st.sampled_from([".npy", "", ".npy/", ".NPY"]))
        member = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 4)
        return npz([(name + suffix, member)])
    if kind == "method":  # patch every compression method field to another number
        data = bytearray(valid)
        method = draw(st.sampled_from([1, 6, 9, 12, 14, 93, 99, 0xFFFF]))
        for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            at = data.find(signature)
            while at >= 0:
                struct.pack_into("<H", data, at + offset, method)
                at = data.find(signature, at + 4)
        if draw(st.booleans()):  # and the 'encrypted' flag
            for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
                at = data.find(signature)
                while at >= 0:
                    struct.pack_into("<H", data, at + offset, 1)
                    at = data.find(signature, at + 4)
        return bytes(data)
    member = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 4)
    return npz(
        [(f"a{i}.npy", member) for i in range(draw(st.integers(2, 40)))] + [("a0.npy", member)]
    )


def _patched(data: bytes, signature: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with field ``fmt`` at ``offset`` of every record starting ``signature`` set."""
    out = bytearray(data)
    at = out.find(signature)
    while at >= 0:
        struct.pack_into(fmt, out, at + offset, value)
        at = out.find(signature, at + 4)
    return bytes(out)


_ONE = dump_params({"w": np.zeros(2, np.float32)})
_F8 = "{'descr': '<f8', 'fortran_order': False, 'shape': (%s,), }"

#: Models that once made a reader raise something other than InvalidModel (each names
#: what escaped), kept as regression examples of the fuzz tests.
REGRESSIONS: dict[str, bytes] = {
    # NotImplementedError out of zipfile.open
    "unsupported-method": _patched(
        _patched(_ONE, b"PK\x03\x04", 8, "<H", 99), b"PK\x01\x02", 10, "<H", 99
    ),
    # RuntimeError "password required"
    "encrypted": _patched(_patched(_ONE, b"PK\x03\x04", 6, "<H", 1), b"PK\x01\x02", 8, "<H", 1),
    # NotImplementedError "zip file version 10.9"
    "extract-version": _patched(_ONE, b"PK\x01\x02", 6, "<H", 109),
    # ValueError "negative seek value -1": the directory claims to start one byte later
    "negative-seek": _patched(_ONE, b"PK\x05\x06", 16, "<I", _ONE.rfind(b"PK\x01\x02") + 1),
    # MemoryError: a 200-byte member whose header announces 7.3 TiB of float64
    "huge-shape": npz([("w.npy", npy(_F8 % 10**12, b"\0" * 16))]),
    # tokenize.TokenError out of numpy's header parser (a dict that never closes)
    "open-header": npz([("w.npy", npy(_F8[:-3] % 2))]),
}


_T = TypeVar("_T", bound=Callable[..., None])


def with_regressions(test: _T) -> _T:
    """Every model in :data:`REGRESSIONS`, as an ``@example`` of ``test`` (whose one
    argument is the model's bytes)."""
    for data in REGRESSIONS.values():
        test = example(data)(test)
    return test
