"""Moving jobs and results as chunked zip streams with bounded memory.

Upload. :class:`JobUpload` checks a job folder locally (``meta.json`` present and a JSON
object; no symlinks, devices or names the server would refuse) and then produces the
zip *while it is sent*: :mod:`zipfile` writes into a non-seekable sink (so it uses data
descriptors and never seeks back), and after every 1 MiB read from a source file the
sink is drained into chunks. Nothing is spooled to disk and at most about two chunks
are held in memory. Small files are deflated; large ones (model weights, which do not
compress) are stored, so big uploads run at memory speed. An existing ``.zip`` is
streamed as it is.

Download. :class:`ResultDownload` writes the received chunks to a temporary file next
to the destination, checks size and SHA-256 against the stream's header, then
validates every archive entry *before* extracting anything (no ``..``, absolute paths,
drive letters, backslashes, control characters, links or devices; caps on entry
count and total size) and extracts into a temporary folder that is renamed into place,
so ``<destination>/<job_id>/`` is either the whole result or absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flare_protocol._direct_io import DirectWriter
from flare_protocol._generated import common_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.errors import InternalError, InvalidArgumentError, InvalidJobDefinition
from flare_protocol.ignore_files import IgnoreRules
from flare_protocol.job_format import path_problem, validate_meta
from flare_protocol.result_format import FILES, FILES_CONTENT_TYPE, METADATA_KEY, PARTIAL
from flare_protocol.safe_zip import scan_entries, write_entries

ProgressCallback = Callable[[int, int], object]

#: Files at most this big are deflated; larger ones are stored (weights do not compress).
DEFLATE_MAX_BYTES = 4 * 1024 * 1024
_COMPRESSED_SUFFIXES = frozenset(
    {".zip", ".gz", ".npz", ".pt", ".pth", ".h5", ".onnx", ".png", ".jpg", ".jpeg", ".bz2", ".xz"}
)
_MIN_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
#: Call metadata asking DownloadJobResult for one header per file instead of a zip.
RESULT_FILES_METADATA = ((METADATA_KEY, FILES),)
#: Downloaded files at least this big are written with O_DIRECT (flare_protocol._direct_io).
DIRECT_MIN_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _SourceFile:
    arcname: str
    path: Path
    size: int
    mtime: float
    executable: bool


class _Sink(io.RawIOBase):
    """A write-only, non-seekable buffer that :mod:`zipfile` streams into.

    It keeps the pieces it is given; a chunk that is exactly one piece (a stored file's
    block, which zipfile passes through unchanged) is handed on without being copied.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[bytes] = []
        #: bytes buffered and not yet taken
        self.pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        piece = data if type(data) is bytes else bytes(data)
        if piece:
            self._pieces.append(piece)
            self.pending += len(piece)
        return len(piece)

    def take(self, at_least: int) -> Iterator[bytes]:
        """Whole chunks of ``at_least`` bytes (everything when ``at_least`` is 0)."""
        pieces = self._pieces
        if at_least == 0:
            if pieces:
                yield b"".join(pieces)
                pieces.clear()
                self.pending = 0
            return
        while self.pending >= at_least:
            if len(pieces[0]) == at_least:
                chunk = pieces.pop(0)
            else:
                joined = b"".join(pieces)
                chunk, rest = joined[:at_least], joined[at_least:]
                pieces[:] = [rest] if rest else []
            self.pending -= at_least
            yield chunk


class JobUpload:
    """A job folder or zip, checked locally and streamed as zip chunks."""

    def __init__(self, path: Path, files: list[_SourceFile] | None, total: int) -> None:
        self.path = path
        self._files = files
        #: bytes the progress callback counts up to (source bytes of a folder, zip size)
        self.total = total

    @property
    def is_zip(self) -> bool:
        return self._files is None

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def from_path(cls, job_definition_path: str | os.PathLike[str]) -> JobUpload:
        """Check a job folder (or ``.zip``) before anything is sent.

        Raises:
            InvalidJobDefinition: naming the path and what is wrong with it.
        """
        try:
            path = Path(job_definition_path).expanduser()
        except TypeError as exc:
            raise InvalidJobDefinition(
                f"job_definition_path must be a path, got {job_definition_path!r}"
            ) from exc
        try:
            st = path.stat()
        except FileNotFoundError:
            raise InvalidJobDefinition(
                f"job definition {path} does not exist", path=str(path)
            ) from None
        except OSError as exc:
            raise InvalidJobDefinition(
                f"cannot read job definition {path}: {exc.strerror}", path=str(path)
            ) from exc
        if stat.S_ISREG(st.st_mode):
            if not zipfile.is_zipfile(path):
                raise InvalidJobDefinition(
                    f"{path} is a file but not a zip archive; pass a job folder or its .zip",
                    path=str(path),
                )
            return cls(path, None, st.st_size)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidJobDefinition(f"{path} is neither a folder nor a zip", path=str(path))
        return cls._from_folder(path.resolve())

    @classmethod
    def _from_folder(cls, root: Path) -> JobUpload:
        meta = root / "meta.json"
        try:
            meta_doc = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidJobDefinition(
                f"{meta} is missing: a job folder holds meta.json and its app folders",
                path=str(meta),
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidJobDefinition(f"{meta} is not valid JSON: {exc}", path=str(meta)) from exc
        if not isinstance(meta_doc, dict):
            raise InvalidJobDefinition(f"{meta} must hold a JSON object", path=str(meta))
        # The server's own meta.json check (keys it owns, unknown keys, the schema): refused
        # here, before a byte is sent.
        validate_meta(meta_doc, source=str(meta))
        top = root.name
        files: list[_SourceFile] = []
        total = 0
        ignore = IgnoreRules(root)  # .flareignore/.ignore/.fednignore: not part of the job
        try:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                ignore.prune(dirpath, dirnames, filenames)
                here = Path(dirpath)
                dirnames.sort()
                for name in dirnames + sorted(filenames):
                    full = here / name
                    rel = full.relative_to(root).as_posix()
                    reason = path_problem(rel)
                    if reason:
                        raise InvalidJobDefinition(
                            f"{full}: the name has {reason}; the server would refuse it",
                            path=str(full),
                        )
                    st = full.lstat()
                    if stat.S_ISLNK(st.st_mode):
                        raise InvalidJobDefinition(
                            f"{full} is a symbolic link; job folders may hold only regular "
                            "files and folders (copy the target in instead)",
                            path=str(full),
                        )
                    if stat.S_ISDIR(st.st_mode):
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        raise InvalidJobDefinition(f"{full} is not a regular file", path=str(full))
                    files.append(
                        _SourceFile(
                            arcname=f"{top}/{rel}",
                            path=full,
                            size=st.st_size,
                            mtime=st.st_mtime,
                            executable=bool(st.st_mode & 0o111),
                        )
                    )
                    total += st.st_size
        except OSError as exc:
            raise InvalidJobDefinition(
                f"cannot read job folder {root}: {exc}", path=str(root)
            ) from exc
        return cls(root, files, total)

    def chunks(self, progress: ProgressCallback | None = None) -> Iterator[bytes]:
        """The zip's bytes in chunks of :data:`CHUNK_SIZE` (the last may be shorter).

        Raises:
            InvalidJobDefinition: a file vanished or became unreadable while sending.
        """
        if progress is not None:
            progress(0, self.total)
        try:
            if self._files is None:
                yield from self._zip_chunks(progress)
            else:
                yield from self._folder_chunks(self._files, progress)
        except OSError as exc:
            raise InvalidJobDefinition(
                f"reading {getattr(exc, 'filename', None) or self.path} failed while "
                f"uploading: {exc.strerror or exc}",
                path=str(getattr(exc, "filename", None) or self.path),
            ) from exc

    def _zip_chunks(self, progress: ProgressCallback | None) -> Iterator[bytes]:
        sent = 0
        with open(self.path, "rb") as fh:
            while True:
                block = fh.read(CHUNK_SIZE)
                if not block:
                    break
                sent += len(block)
                yield block
                if progress is not None:
                    progress(sent, self.total)

    def _folder_chunks(
        self, files: list[_SourceFile], progress: ProgressCallback | None
    ) -> Iterator[bytes]:
        sink = _Sink()
        done = 0
        with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
            for src in files:
                info = zipfile.ZipInfo(src.arcname, date_time=_zip_time(src.mtime))
                info.file_size = src.size
                info.external_attr = ((0o755 if src.executable else 0o644) | stat.S_IFREG) << 16
                small = src.size <= DEFLATE_MAX_BYTES
                compressible = src.path.suffix.lower() not in _COMPRESSED_SUFFIXES
                info.compress_type = (
                    zipfile.ZIP_DEFLATED if small and compressible else zipfile.ZIP_STORED
                )
                with open(src.path, "rb") as fh, zf.open(info, "w") as dest:
                    while True:
                        # Fill the sink up to a whole chunk, so that the next blocks of a
                        # big stored file arrive chunk-aligned and go out uncopied.
                        block = fh.read(CHUNK_SIZE - sink.pending % CHUNK_SIZE)
                        if not block:
                            break
                        dest.write(block)
                        done += len(block)
                        yield from sink.take(CHUNK_SIZE)
                        if progress is not None:
                            progress(done, self.total)
        yield from sink.take(CHUNK_SIZE)
        yield from sink.take(0)


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(mtime)[:6]
    return max(t, _MIN_ZIP_TIME)  # type: ignore[return-value]


@dataclass(frozen=True)
class ExtractLimits:
    """Caps a downloaded result archive must stay within."""

    max_entries: int = 100_000
    """Most members an archive may hold."""
    max_uncompressed_bytes: int = 64 * 1024**3
    """Most bytes the archive may inflate to."""


def check_destination(destination: str | os.PathLike[str] | None, default: Path) -> Path:
    """The folder a result goes into; it must exist.

    Raises:
        InvalidArgumentError: the folder does not exist or is not a folder.
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
            raise InvalidArgumentError(
                f"cannot create the kit's transfer folder {folder}: {exc.strerror}",
                path=str(folder),
            ) from exc
    if not folder.is_dir():
        raise InvalidArgumentError(
            f"destination {folder} is not an existing folder; create it first",
            path=str(folder),
        )
    return folder


class ResultDownload:
    """Receives a result stream into ``<folder>/<job_id>/`` atomically.

    Feed it every message of the stream (:meth:`feed`), then call :meth:`finish`. A
    ``files-v1`` stream (:mod:`flare_protocol.result_format`) is written file by file
    into a staging folder as it arrives; a zip (older servers) is spooled to a temporary
    file and extracted at the end. Either way every name and size is checked before a
    byte of that file is written, and the staging folder replaces ``<job_id>/`` only
    once everything arrived.
    """

    def __init__(self, folder: Path, job_id: str, limits: ExtractLimits = ExtractLimits()) -> None:
        self.folder = folder
        self.job_id = job_id
        self.limits = limits
        self.final = folder / job_id
        self.expected_size = -1
        self.expected_sha256 = ""
        self.received = 0
        #: bytes the stream announced (-1: unknown); what a progress callback counts up to
        self.total = -1
        self._hash = hashlib.sha256()
        self._mode = ""  # "zip" or "files", set by the first header
        #: The server said the result folder was still being written (see result_format).
        self.partial = False
        try:
            self._staging = Path(tempfile.mkdtemp(prefix=f".{job_id}.", dir=folder))
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot write into {folder}: {exc.strerror}", path=str(folder)
            ) from exc
        self._part: Path | None = None
        self._fh: io.BufferedWriter | None = None
        # files-v1 state
        self._expected_files = 0
        self._names: set[str] = set()
        self._declared = 0
        self._file: DirectWriter | None = None
        self._file_name = ""
        self._file_size = 0

    # -- the stream --------------------------------------------------------------------

    def feed(self, chunk: common_pb2.TransferChunk) -> None:
        """Take the next message of the stream.

        Raises:
            InternalError: the stream is malformed or breaks a cap (nothing is kept).
            InvalidArgumentError: the destination cannot be written.
        """
        if chunk.WhichOneof("item") == "header":
            head = chunk.header
            if not self._mode:
                self.partial = head.params.get(PARTIAL) == "true"
                if head.content_type == FILES_CONTENT_TYPE:
                    self._start_files(head.size, head.params.get("files", ""))
                else:
                    self.header(head.size, head.sha256)
            elif self._mode == "files":
                self._begin_file(head.name, head.size)
            else:
                raise self._bad_stream("a second header in a zip stream")
        elif not self._mode:
            raise InternalError(
                f"the server's result stream for job {self.job_id} did not start with a header",
                job_id=self.job_id,
            )
        else:
            self.write(chunk.data)

    def header(self, size: int, sha256: str) -> None:
        """Start a zip stream of ``size`` bytes (-1: unknown) and SHA-256 (``""``: none)."""
        self._mode = "zip"
        self.expected_size = self.total = size
        self.expected_sha256 = sha256.lower()
        try:
            fd, name = tempfile.mkstemp(
                prefix=f".{self.job_id}.", suffix=".zip.part", dir=self.folder
            )
        except OSError as exc:
            raise self._write_error(exc) from exc
        self._part = Path(name)
        self._fh = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """The next data bytes of the stream."""
        if self._mode == "files":
            self._write_file(data)
            return
        if self._fh is None:
            raise InternalError("the download was already finished or discarded")
        try:
            self._fh.write(data)
        except OSError as exc:
            raise self._write_error(exc) from exc
        if self.expected_sha256:  # hashing costs ~0.6 s per GiB: only when there is a digest
            self._hash.update(data)
        self.received += len(data)

    def discard(self) -> None:
        """Remove everything received so far (after a failure); idempotent."""
        self._close_file()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._part is not None:
            self._part.unlink(missing_ok=True)
            self._part = None
        shutil.rmtree(self._staging, ignore_errors=True)

    def warn_if_partial(self, path: str) -> None:
        """A ``UserWarning`` for the caller of ``download_job_result`` when the result the
        server sent was still being written."""
        if self.partial:
            warnings.warn(
                f"the result of job {self.job_id} in {path} is partial: the server was still "
                "writing it (the sites' logs, summary.json) when its wait ended; download it "
                "again in a moment",
                UserWarning,
                stacklevel=3,
            )

    def finish(self) -> str:
        """Check what arrived, put it in place; return the result folder.

        Raises:
            InternalError: the stream was truncated, its digest differs, or it holds an
                entry that may not be written (the server never sends one).
        """
        try:
            if self._mode == "files":
                self._end_file()
                if len(self._names) != self._expected_files or self.received != self._declared:
                    raise self._bad_stream(
                        f"it ended after {len(self._names)} of {self._expected_files} files "
                        f"({self.received} of {self._declared} bytes); download it again"
                    )
                return str(self._install())
            if self._mode != "zip":
                raise self._bad_stream("it ended before its header")
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if self.expected_size >= 0 and self.received != self.expected_size:
                raise InternalError(
                    f"result of job {self.job_id} was cut short: received {self.received} of "
                    f"{self.expected_size} bytes; download it again",
                    job_id=self.job_id,
                )
            digest = self._hash.hexdigest()
            if self.expected_sha256 and digest != self.expected_sha256:
                raise InternalError(
                    f"result of job {self.job_id} is corrupt: SHA-256 {digest} differs from "
                    f"the server's {self.expected_sha256}; download it again",
                    job_id=self.job_id,
                )
            try:
                return str(self._extract())
            except OSError as exc:
                raise self._write_error(exc, "extract") from exc
        finally:
            self.discard()

    # -- files-v1 ----------------------------------------------------------------------

    def _start_files(self, total: int, files: str) -> None:
        self._mode = "files"
        self.total = total
        if not files.isdigit():
            raise self._bad_stream(f"its header announces {files!r} files")
        self._expected_files = int(files)
        if self._expected_files > self.limits.max_entries:
            raise self._refuse(
                f"it has {self._expected_files} entries (cap {self.limits.max_entries})"
            )
        if total > self.limits.max_uncompressed_bytes:
            raise self._refuse(
                f"it inflates to more than {self.limits.max_uncompressed_bytes} bytes"
            )

    def _begin_file(self, name: str, size: int) -> None:
        self._end_file()
        reason = path_problem(name)
        if reason:
            raise self._refuse(f"entry {name!r} has {reason}")
        if name in self._names:
            raise self._refuse(f"entry {name!r} appears twice")
        if len(self._names) >= min(self._expected_files, self.limits.max_entries):
            raise self._refuse(f"it sends more than the {self._expected_files} files announced")
        if size < 0:
            raise self._bad_stream(f"entry {name!r} announces {size} bytes")
        self._declared += size
        if self._declared > self.limits.max_uncompressed_bytes:
            raise self._refuse(
                f"it inflates to more than {self.limits.max_uncompressed_bytes} bytes"
            )
        self._names.add(name)
        target = self._staging.joinpath(*name.split("/"))
        flags = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Big files bypass the page cache (no GiB of fresh pages; see _direct_io).
            self._file = DirectWriter(target, flags, 0o644, direct=size >= DIRECT_MIN_BYTES)
        except OSError as exc:
            raise self._write_error(exc) from exc
        self._file_name, self._file_size = name, size

    def _write_file(self, data: bytes) -> None:
        if self._file is None:
            raise self._bad_stream("it sends data before naming the file")
        if self._file.size + len(data) > self._file_size:
            raise self._refuse(
                f"entry {self._file_name!r} is longer than its announced {self._file_size} bytes"
            )
        try:
            self._file.write(data)
        except OSError as exc:
            raise self._write_error(exc) from exc
        self.received += len(data)

    def _end_file(self) -> None:
        if self._file is None:
            return
        if self._file.size != self._file_size:
            raise self._bad_stream(
                f"entry {self._file_name!r} was cut short at {self._file.size} of "
                f"{self._file_size} bytes; download it again"
            )
        try:
            self._file.finish(fsync=False)
        except OSError as exc:
            raise self._write_error(exc) from exc
        finally:
            self._file = None

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- zip (older servers) -----------------------------------------------------------

    def _extract(self) -> Path:
        assert self._part is not None

        def refuse(message: str, _entry: str | None) -> InternalError:
            return self._refuse(message)

        try:
            with zipfile.ZipFile(self._part) as zf:
                entries = scan_entries(
                    zf,
                    max_entries=self.limits.max_entries,
                    max_uncompressed_bytes=self.limits.max_uncompressed_bytes,
                    reject=refuse,
                    what="result archive",
                )
                cap = self.limits.max_uncompressed_bytes
                write_entries(
                    zf, entries.files, self._staging, refuse, budget=[cap, cap], durable=False
                )
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise InternalError(
                f"result of job {self.job_id} is not a valid zip archive: {exc}",
                job_id=self.job_id,
            ) from exc
        return self._install()

    def _install(self) -> Path:
        """Move the staging folder into place, replacing an earlier download whole."""
        try:
            if self.final.exists() or self.final.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{self.job_id}.old.", dir=self.folder))
                os.replace(self.final, old / "previous")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(self._staging, self.final)
        except OSError as exc:
            raise self._write_error(exc, "extract") from exc
        return self.final

    def _bad_stream(self, why: str) -> InternalError:
        return InternalError(f"result of job {self.job_id} is malformed: {why}", job_id=self.job_id)

    def _write_error(self, exc: OSError, verb: str = "write") -> InvalidArgumentError:
        return InvalidArgumentError(
            f"cannot {verb} the result of job {self.job_id} into {self.folder}: "
            f"{exc.strerror or exc}",
            path=str(self.folder),
            job_id=self.job_id,
        )

    def _refuse(self, why: str) -> InternalError:
        return InternalError(
            f"refusing to extract the result of job {self.job_id}: {why}", job_id=self.job_id
        )


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


class ModelDownload:
    """Receives a model stream into a temporary file, checks it, then renames it into place.

    The file is complete or absent: size and SHA-256 (from the stream's header) are
    checked, and the data is flushed to disk before the rename.
    """

    def __init__(self, target: Path, what: str, max_bytes: int = 64 * 1024**3) -> None:
        self.target = target
        self.what = what
        self.max_bytes = max_bytes
        self.expected_size = -1
        self.expected_sha256 = ""
        self.received = 0
        self._hash = hashlib.sha256()
        try:
            fd, name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".part", dir=target.parent
            )
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot write into {target.parent}: {exc.strerror}", path=str(target.parent)
            ) from exc
        self._part = Path(name)
        self._fh: io.BufferedWriter | None = os.fdopen(fd, "wb")

    def header(self, size: int, sha256: str) -> None:
        if size > self.max_bytes:
            raise InternalError(f"{self.what} is {size} bytes, over the {self.max_bytes} cap")
        self.expected_size = size
        self.expected_sha256 = sha256.lower()

    def write(self, data: bytes) -> None:
        if self._fh is None:
            raise InternalError("the download was already finished or discarded")
        self.received += len(data)
        if self.received > self.max_bytes or (
            self.expected_size >= 0 and self.received > self.expected_size
        ):
            raise InternalError(f"{self.what}: the server sent more bytes than it announced")
        try:
            self._fh.write(data)
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot write {self.what} into {self.target.parent}: {exc.strerror or exc}",
                path=str(self.target.parent),
            ) from exc
        self._hash.update(data)

    def discard(self) -> None:
        """Remove the partial file (after a failure)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._part.unlink(missing_ok=True)

    def finish(self) -> str:
        """Check what arrived and rename it into place; return the file's path.

        Raises:
            InternalError: the stream was cut short or its digest differs.
        """
        try:
            if self._fh is None:
                raise InternalError("the download was already finished or discarded")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            if self.expected_size >= 0 and self.received != self.expected_size:
                raise InternalError(
                    f"{self.what} was cut short: received {self.received} of "
                    f"{self.expected_size} bytes; download it again"
                )
            digest = self._hash.hexdigest()
            if self.expected_sha256 and digest != self.expected_sha256:
                raise InternalError(
                    f"{self.what} is corrupt: SHA-256 {digest} differs from the server's "
                    f"{self.expected_sha256}; download it again"
                )
            os.chmod(self._part, 0o644)
            os.replace(self._part, self.target)
            return str(self.target)
        finally:
            self.discard()
