"""Uploading a job: a folder zipped *while it is sent*, or an existing ``.zip``.

:class:`JobUpload` checks a job folder locally (``meta.json`` present, a JSON object and
valid by the server's own rules; no symlinks, devices or names the server would refuse)
and then produces the zip while it is sent: :mod:`zipfile` writes into a non-seekable
sink (so it uses data descriptors and never seeks back), and after every 1 MiB read from
a source file the sink is drained into chunks. Nothing is spooled to disk and at most
about two chunks are held in memory. Small files are deflated; large ones (model weights,
which do not compress) are stored, so big uploads run at memory speed. An existing
``.zip`` is streamed as it is. :meth:`JobUpload.messages` frames the chunks with the one
:class:`~flare_protocol.transfer.ChunkSender`.
"""

from __future__ import annotations

import io
import json
import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flare_protocol._generated import common_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.ignore_files import IgnoreRules
from flare_protocol.job_format import path_problem, validate_meta
from flare_protocol.transfer import ChunkSender

ProgressCallback = Callable[[int, int], object]

#: Files at most this big are deflated; larger ones are stored (weights do not compress).
DEFLATE_MAX_BYTES = 4 * 1024 * 1024
_COMPRESSED_SUFFIXES = frozenset(
    {".zip", ".gz", ".npz", ".pt", ".pth", ".h5", ".onnx", ".png", ".jpg", ".jpeg", ".bz2", ".xz"}
)
_MIN_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


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
        except (OSError, ValueError, RecursionError) as exc:  # also: too many digits, too deep
            raise InvalidJobDefinition(f"{meta} is not valid JSON: {exc}", path=str(meta)) from None
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

    def messages(
        self, progress: ProgressCallback | None = None, initial_model_job_id: str | None = None
    ) -> Iterator[common_pb2.TransferChunk]:
        """The SubmitJob stream: a header (the size of a zip, -1 for a folder zipped on
        the fly; ``initial_model_job_id`` as a param), then :meth:`chunks`.

        Raises:
            InvalidJobDefinition: a file vanished, became unreadable or changed size.
        """
        params = {"initial_model_job_id": initial_model_job_id} if initial_model_job_id else {}
        sender = ChunkSender(
            f"job {self.path}",
            name=self.name,
            size=self.total if self.is_zip else -1,
            content_type="application/zip",
            params=params,
            error=InvalidJobDefinition,
            details={"path": str(self.path)},
        )
        return sender.messages(self.chunks(progress))

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
    return max(t, _MIN_ZIP_TIME)
