"""Check an update ``.npz`` user code wrote and hash it, reading the file once.

Theory of operation. Before uploading an update the site proves it is a model the
server will accept (``.npy`` members only, allowed names, numeric dtypes, finite floats,
under the size caps) and needs its SHA-256 for the upload header. Loading it with
:func:`flare_protocol.models.load_params` would copy every array into fresh memory (on
the benchmark VM, first-touch memory runs at ~320 MiB/s) and hashing would read it a
second time. Here the file is memory-mapped read-only: the zip directory is read with
:mod:`zipfile`, each stored member's ``.npy`` header is parsed with pickle disabled and
its data is checked for NaN and infinity in place, in slices, and the whole mapping is
hashed. Nothing is ever unpickled or executed. A member that is compressed or encrypted
(not what :func:`~flare_protocol.models.save_params` writes by default) falls back to
``load_params``, which inflates it under the same caps.

The hash describes the file as it was read. If user code rewrote the file afterwards,
the server, which hashes what it receives, refuses the upload; it also re-checks the
model itself on receipt.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from flare_protocol.errors import InvalidModel
from flare_protocol.models import MAX_ARRAYS, check_params, load_params

__all__ = ["verify_update"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: numpy refuses .npy headers above 10,000 bytes by default; read a little more.
_NPY_HEADER_MAX = 16 * 1024
#: Elements checked for finiteness per slice (bounded temporary memory).
_SLICE = 1 << 20


def verify_update(path: Path, *, max_bytes: int) -> tuple[str, int]:
    """Check the ``.npz`` at ``path`` like ``load_params`` would; return (sha256 hex, size).

    Raises:
        InvalidModel: not an npz, non-numeric or pickled arrays, bad names, NaN or
            infinity, over ``max_bytes``.
    """
    where = str(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise InvalidModel(f"{where} is not an .npz archive: the file is empty", path=where)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                if not _check_in_place(fh, mapped, view, size, max_bytes, where):
                    load_params(path, max_bytes=max_bytes)
                digest = hashlib.sha256(view).hexdigest()
            finally:
                view.release()
    return digest, size


def _check_in_place(
    fh: io.BufferedReader,
    mapped: mmap.mmap,
    view: memoryview,
    size: int,
    max_bytes: int,
    where: str,
) -> bool:
    """True when every member was checked here; False: let ``load_params`` do it."""
    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidModel(f"{where} is not an .npz archive: {exc}", path=where) from exc
    with archive:
        members = archive.infolist()
    if len(members) > MAX_ARRAYS:
        raise InvalidModel(
            f"{where} holds {len(members)} arrays, more than the limit of {MAX_ARRAYS}", path=where
        )
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        raise InvalidModel(
            f"{where} would inflate to {declared} bytes, more than the limit of {max_bytes}",
            path=where,
        )
    if any(m.compress_type != zipfile.ZIP_STORED or m.flag_bits & 0x1 for m in members):
        return False
    seen: set[str] = set()
    for member in members:
        if not member.filename.endswith(".npy"):
            raise InvalidModel(
                f"{where}: member {member.filename!r} is not a .npy array", path=where
            )
        name = member.filename[: -len(".npy")]
        if name in seen:
            raise InvalidModel(f"{where}: array {name!r} appears twice", path=where)
        seen.add(name)
        start = _data_start(mapped, member, size, where)
        _check_array(view, name, start, member.file_size, where)
    return True


def _data_start(mapped: mmap.mmap, member: zipfile.ZipInfo, size: int, where: str) -> int:
    offset = member.header_offset
    if offset < 0 or offset + _LOCAL_HEADER.size > size:
        raise InvalidModel(f"{where}: member {member.filename!r} lies outside the file", path=where)
    signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(mapped, offset)
    if signature != _LOCAL_SIGNATURE:
        raise InvalidModel(f"{where}: member {member.filename!r} is damaged", path=where)
    start = offset + _LOCAL_HEADER.size + name_len + extra_len
    if member.compress_size != member.file_size or start + member.file_size > size:
        raise InvalidModel(f"{where}: member {member.filename!r} is truncated", path=where)
    return start


def _check_array(view: memoryview, name: str, start: int, length: int, where: str) -> None:
    head = io.BytesIO(view[start : start + min(length, _NPY_HEADER_MAX)].tobytes())
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(head)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(head)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidModel(
            f"{where}: array {name!r} cannot be read without pickle: {exc}", path=where, name=name
        ) from exc
    if dtype.hasobject:  # what numpy's read_array(allow_pickle=False) refuses
        raise InvalidModel(
            f"{where}: array {name!r} cannot be read without pickle: it holds Python objects",
            path=where,
            name=name,
        )
    # Names and dtypes get exactly load_params' checks and messages (on an empty stand-in).
    try:
        check_params({name: np.empty(0, dtype=dtype)})
    except InvalidModel as exc:
        raise InvalidModel(f"{where}: {exc.message}", path=where, name=name) from exc
    count = int(np.prod(shape, dtype=np.int64))
    data = start + head.tell()
    if head.tell() + count * dtype.itemsize != length:
        raise InvalidModel(
            f"{where}: array {name!r} is damaged: its header announces {count} values of "
            f"{dtype} but the member holds {length - head.tell()} bytes",
            path=where,
            name=name,
        )
    if dtype.kind not in "fc" or count == 0:
        return
    values = np.frombuffer(view, dtype=dtype, count=count, offset=data)
    try:
        finite = all(
            np.isfinite(values[first : first + _SLICE]).all() for first in range(0, count, _SLICE)
        )
    finally:
        del values  # the mapping can only be closed once no array points into it
    if not finite:
        raise InvalidModel(f"{where}: array {name!r} contains NaN or infinity", path=where)
