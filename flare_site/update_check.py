"""Check an update ``.npz`` user code wrote and hash it, reading the file once.

Theory of operation. Before uploading an update the site proves it is a model the
server will accept (``.npy`` members only, allowed names, numeric dtypes, finite floats,
under the size caps) and needs its SHA-256 for the upload header. Loading it with
:func:`flare_protocol.models.load_params` would copy every array into fresh memory (on
the benchmark VM, first-touch memory runs at ~320 MiB/s) and hashing would read it a
second time. Here the zip directory is read with :mod:`zipfile` and each stored member's
``.npy`` header is parsed with pickle disabled; then the file is read once, front to
back, through one reused 4 MiB buffer: every byte goes into the SHA-256 and the bytes of
float arrays are checked for NaN and infinity as they pass. Nothing is unpickled or
executed, nothing is memory-mapped (user code truncating the file meanwhile yields an
error, not a SIGBUS in the site). A member that is compressed or encrypted (not what
:func:`~flare_protocol.models.save_params` writes by default) falls back to
``load_params``, which inflates it under the same caps.

The hash describes the file as it was read. If user code rewrote the file afterwards,
the server, which hashes what it receives, refuses the upload; it also re-checks the
model itself on receipt.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flare_protocol.errors import InvalidModel
from flare_protocol.models import MAX_ARRAYS, check_params, load_params

__all__ = ["verify_update"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: numpy refuses .npy headers above 10,000 bytes by default; read a little more.
_NPY_HEADER_MAX = 16 * 1024
#: Bytes read at a time: a multiple of every numeric itemsize (at most 16, complex128).
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Region:
    """The data bytes of one array inside the file."""

    name: str
    start: int
    length: int
    dtype: np.dtype


def verify_update(path: Path, *, max_bytes: int) -> tuple[str, int]:
    """Check the ``.npz`` at ``path`` like ``load_params`` would; return (sha256 hex, size).

    Raises:
        InvalidModel: not an npz, non-numeric or pickled arrays, bad names, NaN or
            infinity, over ``max_bytes``, or changed while it was read.
    """
    where = str(path)
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise InvalidModel(f"{where} is not an .npz archive: the file is empty", path=where)
        regions = _regions(fh, size, max_bytes, where)
        if regions is None:
            load_params(path, max_bytes=max_bytes)
            regions = []
        fh.seek(0)
        return _read_through(fh, size, regions, where), size


def _regions(fh: io.FileIO, size: int, max_bytes: int, where: str) -> list[_Region] | None:
    """Every array's data region in file order; None: let ``load_params`` check it."""
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
        return None
    regions: list[_Region] = []
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
        start = _member_start(fh, member, size, where)
        regions.append(_array_region(fh, name, start, member.file_size, where))
    regions.sort(key=lambda r: r.start)
    for before, after in zip(regions, regions[1:], strict=False):
        if after.start < before.start + before.length:
            raise InvalidModel(
                f"{where}: arrays {before.name!r} and {after.name!r} overlap", path=where
            )
    return regions


def _read_at(fh: io.FileIO, offset: int, length: int) -> bytes:
    fh.seek(offset)
    return fh.read(length)


def _member_start(fh: io.FileIO, member: zipfile.ZipInfo, size: int, where: str) -> int:
    offset = member.header_offset
    if offset < 0 or offset + _LOCAL_HEADER.size > size:
        raise InvalidModel(f"{where}: member {member.filename!r} lies outside the file", path=where)
    raw = _read_at(fh, offset, _LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise InvalidModel(f"{where}: member {member.filename!r} is truncated", path=where)
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
    if signature != _LOCAL_SIGNATURE:
        raise InvalidModel(f"{where}: member {member.filename!r} is damaged", path=where)
    start = offset + _LOCAL_HEADER.size + name_len + extra_len
    if member.compress_size != member.file_size or start + member.file_size > size:
        raise InvalidModel(f"{where}: member {member.filename!r} is truncated", path=where)
    return start


def _array_region(fh: io.FileIO, name: str, start: int, length: int, where: str) -> _Region:
    head = io.BytesIO(_read_at(fh, start, min(length, _NPY_HEADER_MAX)))
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
    if head.tell() + count * dtype.itemsize != length:
        raise InvalidModel(
            f"{where}: array {name!r} is damaged: its header announces {count} values of "
            f"{dtype} but the member holds {length - head.tell()} bytes",
            path=where,
            name=name,
        )
    return _Region(name, start + head.tell(), count * dtype.itemsize, dtype)


def _read_through(fh: io.FileIO, size: int, regions: list[_Region], where: str) -> str:
    """Hash the whole file, checking float regions for NaN and infinity on the way."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    position = 0

    def pump(until: int, region: _Region | None) -> None:
        nonlocal position
        check = region is not None and region.dtype.kind in "fc"
        while position < until:
            want = min(_CHUNK, until - position)
            got = 0
            while got < want:
                n = fh.readinto(view[got:want])
                if not n:
                    raise InvalidModel(f"{where} changed while it was read", path=where)
                got += n
            digest.update(view[:want])
            if check:
                assert region is not None
                values = np.frombuffer(
                    buffer, dtype=region.dtype, count=want // region.dtype.itemsize
                )
                finite = bool(np.isfinite(values).all())
                del values
                if not finite:
                    raise InvalidModel(
                        f"{where}: array {region.name!r} contains NaN or infinity", path=where
                    )
            position += want

    try:
        for region in regions:
            pump(region.start, None)
            pump(region.start + region.length, region)
        pump(size, None)
        if fh.read(1):
            raise InvalidModel(f"{where} changed while it was read", path=where)
    finally:
        view.release()
    return digest.hexdigest()
