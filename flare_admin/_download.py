"""Downloads: a job's result folder and a global model, checked, then put in place whole.

Every stream keeps the rules of the one :class:`~flare_protocol.transfer.ChunkReceiver`
(a header first, exactly the announced bytes, their SHA-256 when announced, caps); a
broken rule is the server's fault (``InternalError``), a local disk failure a
``LocalIOError`` naming the path, and either way nothing is left behind.

Result. :class:`ResultDownload` receives ``DownloadJobResult`` into a staging folder
beside ``<folder>/<job_id>/`` and renames it into place only once everything arrived, so
the folder is the whole result or the previous one. The stream's first header picks its
format (:mod:`flare_protocol.result_format`): :class:`FilesFormat` (``files-v1``, what
this library asks for) writes each file as it arrives, in bounded memory, after its name
and size are checked (no ``..``, absolute paths, drive letters, backslashes, control
characters, no duplicates, caps on entries and total size); files of 4 MiB and more are
written with ``O_DIRECT``. :class:`ZipFormat` (older servers) spools the zip to a
temporary file, then checks every entry before extracting any.

Model. :class:`ModelDownload` writes a ``.npz`` to a temporary file beside its target,
checks size and SHA-256, fsyncs and renames it into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from flare_protocol._direct_io import DirectWriter
from flare_protocol._generated import common_pb2
from flare_protocol.errors import InternalError, InvalidArgumentError, LocalIOError
from flare_protocol.job_format import path_problem
from flare_protocol.result_format import FILES, FILES_CONTENT_TYPE, METADATA_KEY, PARTIAL
from flare_protocol.safe_zip import scan_entries, write_entries
from flare_protocol.transfer import ChunkReceiver

#: Call metadata asking DownloadJobResult for one header per file instead of a zip.
RESULT_FILES_METADATA = ((METADATA_KEY, FILES),)
#: Downloaded files at least this big are written with O_DIRECT (flare_protocol._direct_io).
DIRECT_MIN_BYTES = 4 * 1024 * 1024
#: What to do after a damaged download, in its error message.
_AGAIN = "download it again"


@dataclass(frozen=True)
class ExtractLimits:
    """Caps a downloaded result must stay within."""

    max_entries: int = 100_000
    """Most files (members) a result may hold."""
    max_uncompressed_bytes: int = 64 * 1024**3
    """Most bytes a result may hold (inflate to)."""


def check_destination(destination: str | os.PathLike[str] | None, default: Path) -> Path:
    """The folder a result goes into; it must exist (the kit's default is created).

    Raises:
        InvalidArgumentError: the folder does not exist or is not a folder.
        LocalIOError: the kit's transfer folder cannot be created.
    """
    try:
        folder = default if destination is None else Path(destination).expanduser()
    except TypeError:
        raise InvalidArgumentError(
            f"destination must be a folder path, got {destination!r}"
        ) from None
    if destination is None:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LocalIOError.of(exc, "create the kit's transfer folder", folder) from exc
    if not folder.is_dir():
        raise InvalidArgumentError(
            f"destination {folder} is not an existing folder; create it first",
            path=str(folder),
        )
    return folder


def model_target(
    destination: str | os.PathLike[str] | None, default_folder: Path, file_name: str
) -> Path:
    """Where a downloaded model goes: ``<folder>/<file_name>``, or ``destination`` itself
    when it names a ``.npz`` file in an existing folder.

    Raises:
        InvalidArgumentError: the folder does not exist.
    """
    if destination is not None and str(destination).endswith(".npz"):
        path = Path(destination).expanduser()
        if not path.parent.is_dir():
            raise InvalidArgumentError(
                f"destination {path}: folder {path.parent} does not exist; create it first",
                path=str(path),
            )
        if path.is_dir():
            raise InvalidArgumentError(f"destination {path} is a folder", path=str(path))
        return path
    return check_destination(destination, default_folder) / file_name


class _PartFile:
    """A temporary file beside where a download goes, written as the data arrives; a
    failure to write it is a ``LocalIOError`` (``error``)."""

    def __init__(
        self, folder: Path, prefix: str, suffix: str, error: Callable[[OSError], LocalIOError]
    ) -> None:
        self._error = error
        try:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        except OSError as exc:
            raise error(exc) from exc
        self.path = Path(name)
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        if self._fh is None:
            raise InternalError("the download was already finished or discarded")
        try:
            self._fh.write(data)
        except OSError as exc:
            raise self._error(exc) from exc

    def close(self, *, fsync: bool = False) -> None:
        """Flush what was written (``fsync``: to the disk) and close the file."""
        fh, self._fh = self._fh, None
        if fh is None:
            raise InternalError("the download was already finished or discarded")
        try:
            with fh:
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise self._error(exc) from exc

    def discard(self) -> None:
        """Close and remove the file (after a failure, or once it was used); idempotent."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


class _Result:
    """What the formats share: the job, the staging folder and the errors."""

    def __init__(self, folder: Path, job_id: str, limits: ExtractLimits) -> None:
        self.folder, self.job_id, self.limits = folder, job_id, limits
        self.what = f"the result of job {job_id}"
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f".{job_id}.", dir=folder))
        except OSError as exc:
            raise self.local_error(exc) from exc

    def malformed(self, why: str) -> InternalError:
        return InternalError(f"{self.what} is malformed: {why}", job_id=self.job_id)

    def refuse(self, why: str) -> InternalError:
        return InternalError(f"refusing to extract {self.what}: {why}", job_id=self.job_id)

    def receiver(self, what: str, header: common_pb2.TransferHeader) -> ChunkReceiver:
        receiver = ChunkReceiver(
            what, error=InternalError, remedy=_AGAIN, details={"job_id": self.job_id}
        )
        receiver.on_header(header)
        return receiver

    def local_error(self, exc: OSError, doing: str = "write") -> LocalIOError:
        return LocalIOError.of(exc, f"{doing} {self.what} into", self.folder, job_id=self.job_id)


class FilesFormat:
    """A ``files-v1`` stream: one header per file, each file written as it arrives."""

    def __init__(self, result: _Result, header: common_pb2.TransferHeader) -> None:
        self._result = result
        limits = result.limits
        #: bytes the stream announced (what a progress callback counts up to)
        self.total = int(header.size)
        self.received = 0
        files = header.params.get("files", "")
        # ASCII digits only: str.isdigit() also accepts '²' and '٣', which int() refuses.
        if not (files.isascii() and files.isdigit() and len(files) <= 20):
            raise result.malformed(f"its header announces {files[:40]!r} files")
        self._expected = int(files)
        if self._expected > limits.max_entries:
            raise result.refuse(f"it has {self._expected} entries (cap {limits.max_entries})")
        if self.total > limits.max_uncompressed_bytes:
            raise result.refuse(f"it inflates to more than {limits.max_uncompressed_bytes} bytes")
        self._names: set[str] = set()
        self._declared = 0
        self._file: DirectWriter | None = None
        self._receiver: ChunkReceiver | None = None

    def feed(self, message: common_pb2.TransferChunk) -> None:
        if message.WhichOneof("item") == "header":
            self._begin_file(message.header)
            return
        if self._receiver is None or self._file is None:
            raise self._result.malformed("it sends data before naming the file")
        data = self._receiver.feed(message)
        if data:
            try:
                self._file.write(data)
            except OSError as exc:
                raise self._result.local_error(exc) from exc
            self.received += len(data)

    def _begin_file(self, header: common_pb2.TransferHeader) -> None:
        self._end_file()
        result, limits, name, size = self._result, self._result.limits, header.name, header.size
        reason = path_problem(name)
        if reason:
            raise result.refuse(f"entry {name!r} has {reason}")
        if name in self._names:
            raise result.refuse(f"entry {name!r} appears twice")
        if len(self._names) >= min(self._expected, limits.max_entries):
            raise result.refuse(f"it sends more than the {self._expected} files announced")
        self._receiver = result.receiver(f"entry {name!r} of {result.what}", header)
        if size < 0:
            raise result.malformed(f"entry {name!r} announces {size} bytes")
        self._declared += size
        if self._declared > limits.max_uncompressed_bytes:
            raise result.refuse(f"it inflates to more than {limits.max_uncompressed_bytes} bytes")
        self._names.add(name)
        target = result.staging.joinpath(*name.split("/"))
        flags = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Big files bypass the page cache (no GiB of fresh pages; see _direct_io).
            self._file = DirectWriter(target, flags, 0o644, direct=size >= DIRECT_MIN_BYTES)
        except OSError as exc:
            raise result.local_error(exc) from exc

    def _end_file(self) -> None:
        if self._receiver is None or self._file is None:
            return
        file, self._file = self._file, None
        try:
            self._receiver.finish()
            file.finish(fsync=False)
        except OSError as exc:
            raise self._result.local_error(exc) from exc
        finally:
            file.close()

    def finish(self) -> None:
        """The last file is written; every announced file arrived whole."""
        self._end_file()
        if len(self._names) != self._expected or self.received != self._declared:
            raise self._result.malformed(
                f"it ended after {len(self._names)} of {self._expected} files "
                f"({self.received} of {self._declared} bytes); {_AGAIN}"
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._receiver is not None:
            self._receiver.cancel()


class ZipFormat:
    """A zip (older servers): spooled to a temporary file, checked, then extracted."""

    def __init__(self, result: _Result, header: common_pb2.TransferHeader) -> None:
        self._result = result
        self._receiver = result.receiver(result.what, header)
        self.total = self._receiver.size
        self._part = _PartFile(result.folder, f".{result.job_id}.", ".zip.part", result.local_error)

    @property
    def received(self) -> int:
        return self._receiver.received

    def feed(self, message: common_pb2.TransferChunk) -> None:
        data = self._receiver.feed(message)
        if data:
            self._part.write(data)

    def finish(self) -> None:
        """Size and SHA-256 are right; every entry is checked, then extracted."""
        result = self._result
        self._part.close()
        self._receiver.finish()

        def refuse(message: str, _entry: str | None) -> InternalError:
            return result.refuse(message)

        limits = result.limits
        try:
            with zipfile.ZipFile(self._part.path) as zf:
                entries = scan_entries(
                    zf,
                    max_entries=limits.max_entries,
                    max_uncompressed_bytes=limits.max_uncompressed_bytes,
                    reject=refuse,
                    what="result archive",
                )
                cap = limits.max_uncompressed_bytes
                write_entries(
                    zf, entries.files, result.staging, refuse, budget=[cap, cap], durable=False
                )
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            NotImplementedError,
            RuntimeError,
            UnicodeDecodeError,
        ) as exc:  # UnicodeDecodeError: a name not in its encoding
            raise InternalError(
                f"{result.what} is not a valid zip archive: {exc}", job_id=result.job_id
            ) from exc
        except OSError as exc:
            raise result.local_error(exc, "extract") from exc

    def close(self) -> None:
        self._part.discard()
        self._receiver.cancel()


class ResultDownload:
    """Receives a result stream into ``<folder>/<job_id>/`` atomically.

    Feed it every message of the stream (:meth:`feed`), then call :meth:`finish`; after a
    failure, :meth:`discard`. The first header picks the format (:class:`FilesFormat` or
    :class:`ZipFormat`).
    """

    def __init__(self, folder: Path, job_id: str, limits: ExtractLimits = ExtractLimits()) -> None:
        self._result = _Result(folder, job_id, limits)
        self.final = folder / job_id
        self._format: FilesFormat | ZipFormat | None = None
        #: The server said the result folder was still being written (see result_format).
        self.partial = False

    @property
    def received(self) -> int:
        """Data bytes received so far."""
        return self._format.received if self._format is not None else 0

    @property
    def total(self) -> int:
        """Bytes the stream announced (-1: unknown); what a progress callback counts up to."""
        return self._format.total if self._format is not None else -1

    def feed(self, message: common_pb2.TransferChunk) -> None:
        """Take the next message of the stream.

        Raises:
            InternalError: the stream is malformed or breaks a cap.
            LocalIOError: the destination cannot be written.
        """
        if self._format is not None:
            self._format.feed(message)
            return
        if message.WhichOneof("item") != "header":
            raise self._result.malformed("the stream did not start with a header")
        head = message.header
        self.partial = head.params.get(PARTIAL) == "true"
        if head.content_type == FILES_CONTENT_TYPE:
            self._format = FilesFormat(self._result, head)
        else:
            self._format = ZipFormat(self._result, head)

    def finish(self) -> str:
        """Check what arrived and put it in place (replacing an earlier download of the
        job whole); return the result folder. Nothing is kept on failure.

        Raises:
            InternalError: the stream was truncated, its digest differs, or it holds an
                entry that may not be written (the server never sends one).
            LocalIOError: the destination cannot be written.
        """
        try:
            if self._format is None:
                raise self._result.malformed("the stream ended before its header")
            self._format.finish()
            return str(self._install())
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove everything received so far (after a failure); idempotent."""
        if self._format is not None:
            self._format.close()
        shutil.rmtree(self._result.staging, ignore_errors=True)

    def warn_if_partial(self, path: str) -> None:
        """A ``UserWarning`` for the caller of ``download_job_result`` when the result the
        server sent was still being written."""
        if self.partial:
            warnings.warn(
                f"the result of job {self._result.job_id} in {path} is partial: the server "
                "was still writing it (the sites' logs, summary.json) when its wait ended; "
                "download it again in a moment",
                UserWarning,
                stacklevel=3,
            )

    def _install(self) -> Path:
        """Move the staging folder into place, replacing an earlier download whole."""
        result = self._result
        try:
            if self.final.exists() or self.final.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{result.job_id}.old.", dir=result.folder))
                os.replace(self.final, old / "previous")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(result.staging, self.final)
        except OSError as exc:
            raise result.local_error(exc, "extract") from exc
        return self.final


class ModelDownload:
    """Receives a model stream into a temporary file, checks it, then renames it into place.

    The file is complete or absent: size and SHA-256 (from the stream's header) are
    checked, and the data is flushed to disk before the rename.
    """

    def __init__(self, target: Path, what: str, max_bytes: int = 64 * 1024**3) -> None:
        self.target = target
        self._receiver = ChunkReceiver(
            what, error=InternalError, max_bytes=max_bytes, remedy=_AGAIN
        )
        self._part = _PartFile(target.parent, f".{target.name}.", ".part", self._local_error)

    @property
    def received(self) -> int:
        """Data bytes received so far."""
        return self._receiver.received

    @property
    def total(self) -> int:
        """Bytes the stream announced (-1: not yet, or unknown)."""
        return self._receiver.size

    def feed(self, message: common_pb2.TransferChunk) -> None:
        """Take the next message of the stream.

        Raises:
            InternalError: the stream breaks a rule (no header first, too long, a cap).
            LocalIOError: the file cannot be written.
        """
        data = self._receiver.feed(message)
        if data:
            self._part.write(data)

    def discard(self) -> None:
        """Remove the partial file (after a failure)."""
        self._part.discard()

    def finish(self) -> str:
        """Check what arrived and rename it into place; return the file's path.

        Raises:
            InternalError: the stream was cut short or its digest differs.
            LocalIOError: the file cannot be written.
        """
        try:
            self._part.close(fsync=True)
            self._receiver.finish()
            try:
                os.chmod(self._part.path, 0o644)
                os.replace(self._part.path, self.target)
            except OSError as exc:
                raise self._local_error(exc) from exc
            return str(self.target)
        finally:
            self.discard()

    def _local_error(self, exc: OSError) -> LocalIOError:
        return LocalIOError.of(exc, f"write {self._receiver.what} into", self.target.parent)
