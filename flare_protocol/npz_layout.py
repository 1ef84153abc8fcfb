"""Where each array's bytes lie inside a stored ``.npz``, found without reading the data.

Theory of operation. An ``.npz`` written by :func:`flare_protocol.models.save_params` is a
zip of *stored* (uncompressed) ``.npy`` members, so every array's values sit contiguously
somewhere in the file. :func:`array_regions` reads only the zip directory, each member's
local header and its ``.npy`` header (parsed with pickle disabled), and applies exactly the
checks :func:`~flare_protocol.models.load_params` applies before it reads a value: member
count and declared size under the caps, ``.npy`` members only, allowed and unique names,
numeric dtypes, a header whose shape and dtype account for every byte of the member, and no
two arrays overlapping. It returns ``None`` for an archive with a compressed or encrypted
member: such archives take the ordinary :func:`~flare_protocol.models.load_params` path.

Two readers build on it: the site's update check (hash and NaN-scan the file in one pass,
``flare_site.update_check``) and :func:`view_params`, which turns an archive already in
memory into arrays that *are* its bytes (no copy; values are not checked here, see
:func:`~flare_protocol.models.check_params`).
"""

from __future__ import annotations

import io
import struct
import tokenize
import zipfile
from dataclasses import dataclass
from typing import IO, cast

import numpy as np

from flare_protocol.errors import InvalidModel
from flare_protocol.models import check_params, open_model_archive

__all__ = ["ArrayRegion", "array_regions", "view_params"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: numpy refuses .npy headers above 10,000 bytes by default; read a little more.
_NPY_HEADER_MAX = 16 * 1024


@dataclass(frozen=True)
class ArrayRegion:
    """One array of an archive: its name, dtype and shape, and where its values lie."""

    name: str
    start: int
    length: int
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool


def array_regions(
    fh: IO[bytes], size: int, *, max_bytes: int, max_arrays: int, where: str
) -> list[ArrayRegion] | None:
    """Every array's region, in file order; None when a member is compressed or encrypted.

    ``fh`` is a seekable binary file of ``size`` bytes; only headers are read from it.

    Raises:
        InvalidModel: not a zip, over a cap, a member that is not a plain numeric ``.npy``
            array, a bad or repeated name, a damaged or truncated member, overlapping arrays.
    """
    with open_model_archive(fh, max_bytes=max_bytes, max_arrays=max_arrays, where=where) as zf:
        members = zf.infolist()
    if any(m.compress_type != zipfile.ZIP_STORED or m.flag_bits & 0x1 for m in members):
        return None
    regions: list[ArrayRegion] = []
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


def view_params(
    buffer: memoryview, *, max_bytes: int, max_arrays: int, where: str = "model bytes"
) -> dict[str, np.ndarray] | None:
    """The arrays of a stored ``.npz`` held in ``buffer``, as views of its bytes (no copy).

    The arrays keep ``buffer``'s exporter alive and change if it does; values are not
    checked. None when the archive has a compressed member (use ``load_params``).

    Raises:
        InvalidModel: as :func:`array_regions`.
    """
    # A raw file is a binary file for zipfile (read, seek, tell); typeshed types them apart.
    reader = cast(IO[bytes], _MemoryFile(buffer))
    regions = array_regions(
        reader, len(buffer), max_bytes=max_bytes, max_arrays=max_arrays, where=where
    )
    if regions is None:
        return None
    params: dict[str, np.ndarray] = {}
    for region in sorted(regions, key=lambda r: r.name):
        count = region.length // region.dtype.itemsize
        flat = np.frombuffer(buffer, dtype=region.dtype, count=count, offset=region.start)
        if region.fortran_order:
            params[region.name] = flat.reshape(region.shape[::-1]).transpose()
        else:
            params[region.name] = flat.reshape(region.shape)
    return params


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview (``io.BytesIO`` would copy it)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._view[self._pos : self._pos + len(buffer)]
        memoryview(buffer)[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _read_at(fh: IO[bytes], offset: int, length: int) -> bytes:
    fh.seek(offset)
    return fh.read(length)


def _member_start(fh: IO[bytes], member: zipfile.ZipInfo, size: int, where: str) -> int:
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
    return int(start)


def _array_region(fh: IO[bytes], name: str, start: int, length: int, where: str) -> ArrayRegion:
    head = io.BytesIO(_read_at(fh, start, min(length, _NPY_HEADER_MAX)))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
        # numpy parses the header's dict with ``ast``, and with ``tokenize`` on retry.
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
    return ArrayRegion(
        name, start + head.tell(), count * dtype.itemsize, dtype, tuple(shape), bool(fortran)
    )
