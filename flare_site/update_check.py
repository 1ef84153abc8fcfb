"""Check an update ``.npz`` user code wrote and hash it, reading the file once.

Theory of operation. Before uploading an update the site proves it is a model the
server will accept (``.npy`` members only, allowed names, numeric dtypes, finite floats,
under the size caps) and needs its SHA-256 for the upload header. Loading it with
:func:`flare_protocol.models.load_params` would copy every array into fresh memory (on
the benchmark VM, first-touch memory runs at ~320 MiB/s) and hashing would read it a
second time. Here :func:`flare_protocol.npz_layout.array_regions` locates every array from
the headers alone (pickle disabled, load_params' checks); then the file is read once, front to
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
from pathlib import Path

import numpy as np

from flare_protocol.errors import InvalidModel
from flare_protocol.models import MAX_ARRAYS, load_params
from flare_protocol.npz_layout import ArrayRegion, array_regions

__all__ = ["verify_update"]

#: Bytes read at a time: a multiple of every numeric itemsize (at most 16, complex128).
_CHUNK = 4 * 1024 * 1024


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
        regions = array_regions(fh, size, max_bytes=max_bytes, max_arrays=MAX_ARRAYS, where=where)
        if regions is None:
            load_params(path, max_bytes=max_bytes)
            regions = []
        fh.seek(0)
        return _read_through(fh, size, regions, where), size


def _read_through(fh: io.FileIO, size: int, regions: list[ArrayRegion], where: str) -> str:
    """Hash the whole file, checking float regions for NaN and infinity on the way."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    position = 0

    def pump(until: int, region: ArrayRegion | None) -> None:
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
