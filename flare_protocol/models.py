"""Model parameters on disk and on the wire: a dict of named numeric arrays as ``.npz``.

Theory of operation: a model is ``{name: numpy.ndarray}``. It travels between sites, the
server and training scripts only as an ``.npz`` archive read with ``allow_pickle=False``, so
no code can ride along. Loading checks the archive *before* inflating it (member names,
member count, declared uncompressed size against a cap), reads every member with pickle
disabled, then refuses anything that is not a plain numeric array (object, string or
structured dtypes) and, by default, any NaN or infinity: one poisoned update would
otherwise silently corrupt every site's next global model. Writing goes to a temporary
file in the target folder, is fsynced and renamed, so a half-written model is never taken
for a whole one. Arrays are written uncompressed by default (weights compress poorly and
compression costs seconds per 100 MB); ``compress=True`` is available.

Big models and fresh memory: on the VMs we run on, memory a process has never touched
costs far more (a page fault per 4 KiB, about 0.3 s per 100 MB) than memory it reuses,
and glibc hands every allocation of more than 32 MiB back to the system when it is freed.
A long-lived process handling many models (the server) can pass a :class:`BufferPool` to
:func:`load_params` and :func:`dump_params_into`: arrays are then read into, and archives
written into, big byte buffers that are reused once nothing refers to them any more (the
pool checks this itself, so a buffer still in use is never handed out twice). Every check
of the plain path applies unchanged; anything unusual (another ``.npy`` version, a
non-numeric dtype) takes the plain path.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
import tempfile
import threading
import tokenize
import zipfile
import zlib
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import IO

import numpy as np

from flare_protocol._direct_io import replace_file
from flare_protocol.errors import InvalidModel

__all__ = [
    "DIFF",
    "FULL",
    "BufferPool",
    "MAX_ARRAYS",
    "MAX_MODEL_BYTES",
    "Params",
    "ParamsType",
    "check_params",
    "dump_params",
    "dump_params_into",
    "load_params",
    "params_nbytes",
    "save_params",
]

Params = dict[str, np.ndarray]

#: Default cap on a model's total uncompressed size (all arrays, headers included).
MAX_MODEL_BYTES = 4 * 1024**3
#: Default cap on the number of arrays in one model.
MAX_ARRAYS = 100_000
#: Array names: what PyTorch state dicts and Keras layer names use, minus ``/`` (names
#: become zip member names, so a separator would make them paths).
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,254}$")
#: bool, signed/unsigned integers, floats, complex. Never object (pickle), bytes, str, void.
_NUMERIC_KINDS = frozenset("biufc")


class ParamsType(str, Enum):
    """What an update's arrays mean: the full weights, or the change to the global model."""

    FULL = "FULL"
    DIFF = "DIFF"


FULL = ParamsType.FULL
DIFF = ParamsType.DIFF


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidModel(
            f"array name {name!r} is not allowed: use 1-255 characters from A-Z a-z 0-9 _ . : -, "
            "not starting with '.', ':' or '-'",
            name=name,
        )
    return name


def check_params(params: Mapping[str, object], *, allow_nonfinite: bool = False) -> Params:
    """Return ``params`` as ``{name: ndarray}`` after checking names, dtypes and values.

    Raises:
        InvalidModel: naming the array at fault and why.
    """
    if not isinstance(params, Mapping):
        raise InvalidModel(
            f"model parameters must be a dict of name -> array, got {type(params).__name__}"
        )
    if len(params) > MAX_ARRAYS:
        raise InvalidModel(f"model has {len(params)} arrays, more than the limit of {MAX_ARRAYS}")
    out: Params = {}
    for name, value in params.items():
        _check_name(name)
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, (bool, int, float, complex, np.generic, list, tuple)):
            array = np.asarray(value)
        else:
            raise InvalidModel(
                f"array {name!r} is a {type(value).__name__}, not a numpy array "
                "(convert tensors with .detach().cpu().numpy())",
                name=name,
            )
        if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.fields is not None:
            raise InvalidModel(
                f"array {name!r} has dtype {array.dtype}, only bool, integer, float and complex "
                "arrays are allowed (object arrays would need pickle)",
                name=name,
            )
        if not allow_nonfinite and array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise InvalidModel(f"array {name!r} contains NaN or infinity", name=name)
        out[name] = array
    return out


def params_nbytes(params: Mapping[str, np.ndarray]) -> int:
    """Total size of the arrays' data in bytes."""
    return sum(int(np.asarray(a).nbytes) for a in params.values())


def _write_npz(target: IO[bytes], params: Params, compress: bool) -> None:
    # np.savez would name members after the keys too, but writing members ourselves keeps
    # memory flat (one array at a time, no intermediate copy) and the pickle flag explicit.
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(target, mode="w", compression=method, allowZip64=True) as archive:
        for name, array in params.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def dump_params(
    params: Mapping[str, object], *, compress: bool = False, allow_nonfinite: bool = False
) -> bytes:
    """Serialize a model to ``.npz`` bytes (checked first, see :func:`check_params`)."""
    checked = check_params(params, allow_nonfinite=allow_nonfinite)
    buffer = io.BytesIO()
    _write_npz(buffer, checked, compress)
    return buffer.getvalue()


def save_params(
    params: Mapping[str, object],
    path: str | os.PathLike[str],
    *,
    compress: bool = False,
    durable: bool = True,
    pool: BufferPool | None = None,
) -> Path:
    """Write a model to ``path`` atomically (temp file, fsync, rename); return the path.

    ``durable=False`` skips the fsync, for a file read right away and never needed after
    a crash (the rename still means a reader never sees a half-written model).
    ``pool``: serialize into a reused buffer of it and write that bypassing the page cache
    (``O_DIRECT``, see ``_direct_io``): the same bytes, without filling fresh page-cache
    pages (on the benchmark VM those cost 0.02 to 0.25 s per 100 MB, as writeback allows).
    """
    if pool is not None and not compress:
        replace_file(Path(path), dump_params_into(params, pool), durable=durable)
        return Path(path)
    checked = check_params(params)
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_npz(handle, checked, compress)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with _suppress_os_error():
            os.unlink(tmp_name)
        raise
    return target


class BufferPool:
    """Big byte buffers reused across models (thread-safe).

    :meth:`take` hands out a view of a buffer nothing else refers to any more (no array,
    view or memoryview of it is alive: the pool checks the buffer's reference count), or a
    new one. At most ``max_bytes`` of buffers are kept; the rest are simply dropped.
    """

    #: Requests are rounded up to this, so models of about the same size share buffers.
    GRANULE = 1 << 20

    def __init__(self, max_bytes: int = 2 * 1024**3) -> None:
        self.max_bytes = max_bytes
        self.reused = 0
        self.allocated = 0
        self._lock = threading.Lock()
        self._buffers: list[np.ndarray] = []

    def _idle(self, index: int) -> bool:
        # Two references: the pool's list and getrefcount's own argument.
        return sys.getrefcount(self._buffers[index]) <= 2

    def take(self, nbytes: int) -> np.ndarray:
        """A writable ``uint8`` array of ``nbytes`` bytes (aligned for any numeric dtype)."""
        size = max(-(-nbytes // self.GRANULE) * self.GRANULE, self.GRANULE)
        with self._lock:
            best = -1
            for index in range(len(self._buffers)):
                fits = self._buffers[index].nbytes >= size
                if fits and self._idle(index):
                    if best < 0 or self._buffers[index].nbytes < self._buffers[best].nbytes:
                        best = index
            if best >= 0:
                self.reused += 1
                return self._buffers[best][:nbytes]
            if size > self.max_bytes:
                self.allocated += 1
                return np.empty(nbytes, dtype=np.uint8)
            for index in reversed(range(len(self._buffers))):
                if self._held() + size <= self.max_bytes:
                    break
                if self._idle(index):
                    del self._buffers[index]
            while self._buffers and self._held() + size > self.max_bytes:
                del self._buffers[0]  # still in use: it is freed when its user lets go
            fresh = np.empty(size, dtype=np.uint8)
            self._buffers.append(fresh)
            self.allocated += 1
            return fresh[:nbytes]

    def trim(self) -> int:
        """Give back every buffer nothing refers to (to the system: they are ``mmap``-ed);
        returns how many bytes were released."""
        with self._lock:
            idle = [i for i in range(len(self._buffers)) if self._idle(i)]
            freed = sum(int(self._buffers[i].nbytes) for i in idle)
            for index in reversed(idle):
                del self._buffers[index]
        return freed

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-order array; from a pooled buffer when it is at least
        :attr:`GRANULE` bytes (smaller arrays would waste most of a buffer)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.GRANULE:
            return np.empty(shape, dtype=dtype)
        return self.take(nbytes).view(dtype).reshape(shape)

    @property
    def held_bytes(self) -> int:
        """Bytes of the buffers the pool keeps (in use or idle)."""
        with self._lock:
            return self._held()

    def _held(self) -> int:
        return sum(int(raw.nbytes) for raw in self._buffers)


class _PoolWriter(io.RawIOBase):
    """A seekable in-memory file over buffers of a :class:`BufferPool` (for ``zipfile``)."""

    def __init__(self, pool: BufferPool, capacity: int) -> None:
        super().__init__()
        self._pool = pool
        self._buf = pool.take(capacity)
        self._view = self._buf.data
        self._pos = 0
        self._end = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._end}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def write(self, data: object) -> int:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        stop = self._pos + len(view)
        if stop > len(self._buf):
            bigger = self._pool.take(max(stop, 2 * len(self._buf)))
            bigger[: self._end] = self._buf[: self._end]
            self._view.release()
            self._buf, self._view = bigger, bigger.data
        self._view[self._pos : stop] = view
        self._pos = stop
        self._end = max(self._end, stop)
        return len(view)

    def getbuffer(self) -> memoryview:
        """What was written (a view of the pooled buffer: it stays taken while it lives)."""
        view = self._buf[: self._end].data
        self._view.release()
        return view


def _write_member_direct(member: IO[bytes], array: np.ndarray) -> None:
    """``np.lib.format.write_array`` without its per-16-MiB ``tobytes`` copies."""
    if array.itemsize == 0 or not array.flags.c_contiguous or array.dtype.hasobject:
        np.lib.format.write_array(member, array, allow_pickle=False)
        return
    header = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(member, header)
    except ValueError:  # a header too long for format 1.0, as write_array decides
        np.lib.format.write_array_header_2_0(member, header)
    raw = array.reshape(-1).view(np.uint8)
    for start in range(0, raw.size, _IO_CHUNK):
        member.write(raw[start : start + _IO_CHUNK])  # type: ignore[call-overload]


#: Bytes per step when writing or reading array data through a pool (cache-sized).
_IO_CHUNK = 1 << 20
_READ_CHUNK = 4 << 20


def dump_params_into(params: Mapping[str, object], pool: BufferPool) -> memoryview:
    """Serialize a model like :func:`dump_params` (same bytes), into a pooled buffer.

    The returned view keeps its buffer taken until it and every slice of it are gone.
    """
    checked = check_params(params)
    estimate = 4096 + sum(
        int(a.nbytes) + 2 * len(name) + 1024 + 32 * a.ndim for name, a in checked.items()
    )
    writer = _PoolWriter(pool, estimate)
    with zipfile.ZipFile(
        writer, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True
    ) as archive:
        for name, array in checked.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                _write_member_direct(member, np.asanyarray(array))
    return writer.getbuffer()


class _PlainPath(Exception):
    """This archive is loaded the plain way (it has something the pooled reader leaves to it)."""


class _PooledReader:
    """Reads each array of an archive into one buffer, at offsets that are multiples of 64."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buf = buffer
        self.view = buffer.data
        self.pos = 0

    def __call__(self, stream: IO[bytes]) -> np.ndarray:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise _PlainPath
        if (
            dtype.hasobject
            or dtype.kind not in _NUMERIC_KINDS
            or dtype.fields is not None
            or dtype.itemsize == 0
        ):
            raise _PlainPath  # the plain path refuses these with its own messages
        nbytes = math.prod(shape) * dtype.itemsize
        start = self.pos
        if start + nbytes > len(self.buf):
            raise _PlainPath  # a header promising more than the archive holds
        filled = 0
        while filled < nbytes:
            data = stream.read(min(_READ_CHUNK, nbytes - filled))
            if not data:
                raise _PlainPath  # truncated: the plain path names it
            self.view[start + filled : start + filled + len(data)] = data
            filled += len(data)
        while stream.read(_READ_CHUNK):  # to the member's end: zipfile checks its CRC there
            pass
        self.pos = start + -(-nbytes // 64) * 64
        flat = self.buf[start : start + nbytes].view(dtype)
        if fortran:
            return flat.reshape(shape[::-1]).transpose()
        return flat.reshape(shape)

    def release(self) -> None:
        self.view.release()


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


def load_params(
    source: str | os.PathLike[str] | bytes | memoryview,
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    max_arrays: int = MAX_ARRAYS,
    allow_nonfinite: bool = False,
    pool: BufferPool | None = None,
) -> Params:
    """Read a model from an ``.npz`` file path or bytes, safely.

    Args:
        source: a path to an ``.npz`` file, or its bytes (copied).
        max_bytes: cap on the declared uncompressed size of all members together.
        max_arrays: cap on the number of arrays.
        allow_nonfinite: accept NaN and infinity in float arrays.
        pool: read the arrays into one reused buffer of this pool (same checks, same
            result); the arrays then keep that buffer taken while any of them lives.

    Raises:
        InvalidModel: not an npz, pickled or non-numeric arrays, bad names, over a cap.
    """
    if pool is not None:
        try:
            return _load_params(source, max_bytes, max_arrays, allow_nonfinite, pool)
        except _PlainPath:
            pass
    return _load_params(source, max_bytes, max_arrays, allow_nonfinite, None)


def open_model_archive(
    fh: IO[bytes], *, max_bytes: int, max_arrays: int, where: str
) -> zipfile.ZipFile:
    """``fh`` opened as a zip after its directory passed the caps (member count, the
    declared uncompressed size); nothing is inflated yet.

    Raises:
        InvalidModel: not a zip, or over a cap.
    """
    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise InvalidModel(f"{where} is not an .npz archive: {exc}", path=where) from exc
    members = archive.infolist()
    if len(members) > max_arrays:
        archive.close()
        raise InvalidModel(
            f"{where} holds {len(members)} arrays, more than the limit of {max_arrays}", path=where
        )
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        archive.close()
        raise InvalidModel(
            f"{where} would inflate to {declared} bytes, more than the limit of {max_bytes}",
            path=where,
        )
    return archive


#: What zipfile, its decompressors and numpy's ``.npy`` reader raise for a damaged or
#: hostile member (numpy parses the header's dict with ``ast``, and ``tokenize`` on retry).
_DAMAGED = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    tokenize.TokenError,
    OverflowError,
)


def _check_npy_header(stream: IO[bytes], member: zipfile.ZipInfo, name: str, where: str) -> None:
    """Refuse a member whose ``.npy`` header announces Python objects, or more data than
    the member holds: numpy would allocate what the header announces before reading
    (a 200-byte member could ask for terabytes)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    if dtype.hasobject:
        raise InvalidModel(
            f"{where}: array {name!r} cannot be read without pickle: it holds Python objects",
            path=where,
            name=name,
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > member.file_size:
        raise InvalidModel(
            f"{where}: array {name!r} is damaged: its header announces {nbytes} bytes of "
            f"values, the member holds {member.file_size}",
            path=where,
            name=name,
        )


def _load_params(
    source: str | os.PathLike[str] | bytes | memoryview,
    max_bytes: int,
    max_arrays: int,
    allow_nonfinite: bool,
    pool: BufferPool | None,
) -> Params:
    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    where = "model bytes" if in_memory else str(source)
    reader: _PooledReader | None = None
    handle: IO[bytes] = io.BytesIO(source) if in_memory else open(source, "rb")  # type: ignore[arg-type]  # noqa: SIM115
    try:
        archive = open_model_archive(
            handle, max_bytes=max_bytes, max_arrays=max_arrays, where=where
        )
        with archive:
            members = archive.infolist()
            declared = sum(m.file_size for m in members)
            params: Params = {}
            reader = (
                _PooledReader(pool.take(declared + 64 * len(members))) if pool is not None else None
            )
            for member in members:
                if not member.filename.endswith(".npy"):
                    raise InvalidModel(
                        f"{where}: member {member.filename!r} is not a .npy array", path=where
                    )
                name = _check_name(member.filename[: -len(".npy")])
                if name in params:
                    raise InvalidModel(f"{where}: array {name!r} appears twice", path=where)
                try:
                    with archive.open(member) as stream:
                        _check_npy_header(stream, member, name, where)
                        stream.seek(0)
                        if reader is not None:
                            params[name] = reader(stream)
                        else:
                            params[name] = np.lib.format.read_array(stream, allow_pickle=False)
                except (InvalidModel, _PlainPath):
                    raise
                except _DAMAGED as exc:
                    raise InvalidModel(
                        f"{where}: array {name!r} is damaged: {exc}", path=where, name=name
                    ) from exc
    finally:
        handle.close()
        if reader is not None:
            reader.release()
    try:
        return check_params(params, allow_nonfinite=allow_nonfinite)
    except InvalidModel as exc:
        raise InvalidModel(f"{where}: {exc.message}", path=where) from exc
