"""``flare job pack``: the archive ``Session.submit_job`` would send, written to a file.

The files are those :func:`flare_protocol.ignore_files.job_files` lists (the ignore files
honoured, as ``submit_job`` honours them), each under ``<folder name>/`` as the Session
names them; the same refusals apply (symbolic links, special files, unsafe names), and the
result is checked with the server's job checks before the archive is written. The archive
is written beside its destination and renamed into place, so it is whole or absent.
``Session.submit_job(archive)`` sends it as it is.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.ignore_files import job_files
from flare_protocol.job_format import META_FILE, JobDefinition, path_problem, validate_job_files

__all__ = ["PackResult", "pack_job"]

#: Stored as they are: compressing them again gains nothing.
_COMPRESSED = frozenset(
    {".zip", ".gz", ".tgz", ".npz", ".pt", ".pth", ".h5", ".onnx", ".png", ".jpg"}
)


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack_job` wrote."""

    path: Path
    job: JobDefinition
    #: Files of the folder the ignore files left out.
    left_out: int
    size: int


def _all_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root, followlinks=False))


def pack_job(folder: str | os.PathLike[str], output: str | os.PathLike[str]) -> PackResult:
    """Write job ``folder`` as the zip ``submit_job`` would send, to ``output``.

    Raises:
        InvalidJobDefinition: not a job folder, a file the Session would refuse, or a job
            the server would refuse (naming the file and field).
    """
    root = Path(folder).resolve()
    if not (root / META_FILE).is_file():
        raise InvalidJobDefinition(
            f"{folder}: no {META_FILE}; flare job pack packs a job folder (meta.json and its "
            "apps). A compute package is an app: put it in a job folder, or build the job "
            "with flare_job.PackageRunner",
            path=str(root),
        )
    names = job_files(root)
    for rel in names:
        full = root / rel
        problem = path_problem(rel)
        if problem:
            raise InvalidJobDefinition(f"{full}: the name has {problem}", path=str(full))
        mode = full.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise InvalidJobDefinition(
                f"{full} is a symbolic link; job folders may hold only regular files and "
                "folders (copy the target in, or list it in .flareignore)",
                path=str(full),
            )
        if not stat.S_ISREG(mode):
            raise InvalidJobDefinition(f"{full} is not a regular file", path=str(full))
    job = validate_job_files(names, lambda rel: (root / rel).read_bytes())
    left_out = _all_files(root) - len(names)
    target = Path(output).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with (
            os.fdopen(fd, "wb") as fh,
            zipfile.ZipFile(fh, "w", allowZip64=True, strict_timestamps=False) as archive,
        ):
            for rel in names:
                method = (
                    zipfile.ZIP_STORED
                    if Path(rel).suffix.lower() in _COMPRESSED
                    else zipfile.ZIP_DEFLATED
                )
                archive.write(root / rel, f"{root.name}/{rel}", compress_type=method)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return PackResult(path=target, job=job, left_out=left_out, size=target.stat().st_size)
