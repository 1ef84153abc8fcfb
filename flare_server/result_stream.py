"""A job's result folder as a ``files-v1`` stream (see :mod:`flare_protocol.result_format`).

A worker thread lists the folder (regular files only: symlinks and special files are
skipped, never followed), then reads each file in 1 MiB blocks and builds the messages;
the event loop only forwards them. At most :data:`QUEUE_DEPTH` messages wait between
the two, so memory stays bounded whatever the size of the result, and reading the next
block overlaps with sending the previous one. The thread is the stream's own, not one of
the event loop's shared workers: a client that reads slowly keeps its producer waiting
for as long as it likes, and must not hold a worker every other call needs (the default
pool has ``cpu_count + 4`` of them; six slow readers used to stall every store call).
Nothing is zipped or hashed: TLS protects the bytes in transit and the client checks names
and sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from flare_protocol import errors
from flare_protocol._generated import common_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.result_format import FILES, FILES_CONTENT_TYPE, PARTIAL
from flare_protocol.transfer import ChunkSender

__all__ = ["QUEUE_DEPTH", "files_stream", "list_result_files", "thread_stream", "zip_stream"]

#: Messages (1 MiB each at most) waiting between the reading thread and the event loop.
QUEUE_DEPTH = 4
_DONE = object()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Stopped(Exception):
    """The consumer went away (the call ended): stop reading."""


def list_result_files(root: Path) -> list[tuple[Path, str, int]]:
    """Regular files under ``root``: ``(path, relative name, size)``, in a stable order."""
    found: list[tuple[Path, str, int]] = []
    if not root.is_dir() or root.is_symlink():
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            path = here / name
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                found.append((path, path.relative_to(root).as_posix(), st.st_size))
    return found


def _produce(root: Path, job_id: str, put: Any, partial: bool) -> None:
    files = list_result_files(root)
    params = {"job_id": job_id, "format": FILES, "files": str(len(files))}
    if partial:
        params[PARTIAL] = "true"
    total = sum(size for _, _, size in files)
    put(
        ChunkSender(
            f"the result of job {job_id}",
            name=job_id,
            size=total,
            content_type=FILES_CONTENT_TYPE,
            params=params,
        ).header()
    )
    for path, name, listed in files:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            size = os.fstat(fd).st_size
            if size != listed:
                raise errors.InternalError(f"result file {name} changed while it was being sent")
            sender = ChunkSender(
                f"result file {name}", name=name, size=size, content_type="application/octet-stream"
            )
            put(sender.header())
            while want := sender.next_read():
                block = os.read(fd, want)
                if not block:
                    break
                put(sender.data(block))
            sender.finish()
        finally:
            os.close(fd)


def _gone_is_not_found(job_id: str, produce: Callable[[], None]) -> None:
    """``produce()``, with a result folder deleted meanwhile (the job was deleted while
    its result was being sent) reported as :class:`JobNotFound`, not an internal error."""
    try:
        produce()
    except FileNotFoundError as exc:
        raise errors.JobNotFound(
            f"job {job_id} was deleted while its result was being sent ({exc.filename})"
        ) from exc


def files_stream(
    root: Path, job_id: str, *, partial: bool = False
) -> AsyncIterator[common_pb2.TransferChunk]:
    """The messages of a ``files-v1`` stream of folder ``root`` (``partial``: the folder
    is still being written, and the header says so)."""
    return thread_stream(
        lambda put: _gone_is_not_found(job_id, lambda: _produce(root, job_id, put, partial))
    )


class _ChunkWriter:
    """A write-only, non-seekable file that hands full CHUNK_SIZE chunks to ``put``."""

    def __init__(self, put: Callable[[Any], None]) -> None:
        self.put = put
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        while len(self.buf) >= CHUNK_SIZE:
            self.put(bytes(self.buf[:CHUNK_SIZE]))
            del self.buf[:CHUNK_SIZE]
        return len(data)

    def flush(self) -> None:
        pass

    def close_out(self) -> None:
        if self.buf:
            self.put(bytes(self.buf))
            self.buf.clear()


def _write_zip(root: Path, put: Callable[[Any], None]) -> None:
    out = _ChunkWriter(put)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[call-overload]
        for path, arcname, _ in list_result_files(root):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                info = zipfile.ZipInfo.from_file(path, arcname)
                info.file_size = size
                with zf.open(info, "w", force_zip64=size > 0x7FFF0000) as dst:
                    while block := src.read(CHUNK_SIZE):
                        dst.write(block)
    out.close_out()


def zip_stream(root: Path, job_id: str) -> AsyncIterator[bytes]:
    """The folder ``root`` as a zip (for clients that do not ask for ``files-v1``)."""
    return thread_stream(lambda put: _gone_is_not_found(job_id, lambda: _write_zip(root, put)))


async def thread_stream(
    produce: Callable[[Callable[[Any], None]], None], depth: int = QUEUE_DEPTH
) -> AsyncIterator[Any]:
    """What ``produce(put)`` puts, run in its own thread, with at most ``depth`` queued.

    When the consumer stops early (the call ended), the next ``put`` stops the producer;
    a producer's exception is re-raised to the consumer.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item: Any) -> None:
        if stop.is_set():
            raise _Stopped
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def run() -> None:
        try:
            produce(put)
        except _Stopped:
            return
        except BaseException as exc:  # reported to the consumer
            failure.append(exc)
        if not stop.is_set():
            asyncio.run_coroutine_threadsafe(queue.put(_DONE), loop).result()

    producer: asyncio.Future[None] = loop.create_future()

    def own_thread() -> None:
        try:
            run()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, producer)

    threading.Thread(target=own_thread, name="result-stream", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while not producer.done():  # unblock a producer waiting on a full queue
            while not queue.empty():
                queue.get_nowait()
            await asyncio.sleep(0.001)
