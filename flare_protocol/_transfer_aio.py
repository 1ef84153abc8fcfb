"""The asyncio transport of :mod:`flare_protocol.transfer`: a file sent as a stream.

Shared by the server (blobs, models) and the sites (updates, logs): the bytes are read
in a worker thread, one chunk at a time, so the event loop only forwards messages and
memory stays at one chunk whatever the file's size.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

from flare_protocol._generated import common_pb2
from flare_protocol.transfer import ChunkSender

__all__ = ["file_messages"]


async def file_messages(
    sender: ChunkSender, source: str | os.PathLike[str] | BinaryIO
) -> AsyncIterator[common_pb2.TransferChunk]:
    """``sender``'s header, then the file's bytes (``source``: a path, or a binary file
    open at the start, left open), checked against the header's size at the end."""
    if isinstance(source, (str, os.PathLike)):
        fh: BinaryIO = await asyncio.to_thread(open, source, "rb")
    else:
        fh = source
    try:
        yield sender.header()
        while size := sender.next_read():
            block = await asyncio.to_thread(fh.read, size)
            if not block:
                break
            yield sender.data(block)
        sender.finish()
    finally:
        if fh is not source:
            fh.close()
