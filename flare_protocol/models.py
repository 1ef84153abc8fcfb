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
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import IO

import numpy as np

from flare_protocol.errors import InvalidModel

__all__ = [
    "DIFF",
    "FULL",
    "MAX_ARRAYS",
    "MAX_MODEL_BYTES",
    "Params",
    "ParamsType",
    "check_params",
    "dump_params",
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


def dump_params(params: Mapping[str, object], *, compress: bool = False) -> bytes:
    """Serialize a model to ``.npz`` bytes (checked first, see :func:`check_params`)."""
    checked = check_params(params)
    buffer = io.BytesIO()
    _write_npz(buffer, checked, compress)
    return buffer.getvalue()


def save_params(
    params: Mapping[str, object], path: str | os.PathLike[str], *, compress: bool = False
) -> Path:
    """Write a model to ``path`` atomically (temp file, fsync, rename); return the path."""
    checked = check_params(params)
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_npz(handle, checked, compress)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with _suppress_os_error():
            os.unlink(tmp_name)
        raise
    return target


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


def load_params(
    source: str | os.PathLike[str] | bytes,
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    max_arrays: int = MAX_ARRAYS,
    allow_nonfinite: bool = False,
) -> Params:
    """Read a model from an ``.npz`` file path or bytes, safely.

    Args:
        source: a path to an ``.npz`` file, or its bytes.
        max_bytes: cap on the declared uncompressed size of all members together.
        max_arrays: cap on the number of arrays.
        allow_nonfinite: accept NaN and infinity in float arrays.

    Raises:
        InvalidModel: not an npz, pickled or non-numeric arrays, bad names, over a cap.
    """
    where = "model bytes" if isinstance(source, (bytes, bytearray)) else str(source)
    handle: IO[bytes] = (
        io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")  # noqa: SIM115
    )
    try:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidModel(f"{where} is not an .npz archive: {exc}", path=where) from exc
        with archive:
            members = archive.infolist()
            if len(members) > max_arrays:
                raise InvalidModel(
                    f"{where} holds {len(members)} arrays, more than the limit of {max_arrays}",
                    path=where,
                )
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:
                raise InvalidModel(
                    f"{where} would inflate to {declared} bytes, "
                    f"more than the limit of {max_bytes}",
                    path=where,
                )
            params: Params = {}
            for member in members:
                if not member.filename.endswith(".npy"):
                    raise InvalidModel(
                        f"{where}: member {member.filename!r} is not a .npy array", path=where
                    )
                name = _check_name(member.filename[: -len(".npy")])
                if name in params:
                    raise InvalidModel(f"{where}: array {name!r} appears twice", path=where)
                with archive.open(member) as stream:
                    try:
                        params[name] = np.lib.format.read_array(stream, allow_pickle=False)
                    except ValueError as exc:
                        raise InvalidModel(
                            f"{where}: array {name!r} cannot be read without pickle: {exc}",
                            path=where,
                            name=name,
                        ) from exc
                    except (OSError, EOFError, zipfile.BadZipFile) as exc:
                        raise InvalidModel(
                            f"{where}: array {name!r} is damaged: {exc}", path=where
                        ) from exc
    finally:
        handle.close()
    try:
        return check_params(params, allow_nonfinite=allow_nonfinite)
    except InvalidModel as exc:
        raise InvalidModel(f"{where}: {exc.message}", path=where) from exc
