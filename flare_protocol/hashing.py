"""SHA-256 of files, the digest every blob transfer announces and checks."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from flare_protocol.credentials import CHUNK_SIZE

__all__ = ["sha256_file"]


def sha256_file(source: str | os.PathLike[str] | BinaryIO) -> tuple[str, int]:
    """The hex SHA-256 and size of a file, read in chunks.

    ``source`` is a path, or a binary file open for reading: it is read from its current
    position to the end and then put back at the start (ready to be sent).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return sha256_file(fh)
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    source.seek(0)
    return digest.hexdigest(), size
