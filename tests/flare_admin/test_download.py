"""A download checks every name, size and entry before anything is kept; nothing half-written
remains after a failure, and a local disk failure is a LocalIOError naming the path."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from flare_admin._download import ExtractLimits, ResultDownload, check_destination
from flare_protocol._generated import common_pb2
from flare_protocol.credentials import CHUNK_SIZE
from flare_protocol.errors import InternalError, InvalidArgumentError
from flare_protocol.result_format import FILES_CONTENT_TYPE, PARTIAL
from tests.flare_admin.conftest import drain

JOB = "3f2c0a4e-9b1d-4c6e-8f00-5a7b2c1d9e11"


# -- download ----------------------------------------------------------------------------


def zip_bytes(entries: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def zip_stream(data: bytes, size: int, sha: str) -> list[common_pb2.TransferChunk]:
    """What an older server sends: one header, then the zip."""
    head = common_pb2.TransferHeader(
        name=f"{JOB}.zip", size=size, sha256=sha, content_type="application/zip"
    )
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    return [common_pb2.TransferChunk(header=head)] + [
        common_pb2.TransferChunk(data=c) for c in chunks
    ]


def receive(
    folder: Path,
    data: bytes,
    *,
    size: int | None = None,
    sha: str | None = None,
    limits: ExtractLimits | None = None,
) -> str:
    size = len(data) if size is None else size
    sha = hashlib.sha256(data).hexdigest() if sha is None else sha
    return receive_files(folder, zip_stream(data, size, sha), limits)


def test_a_result_is_extracted_into_its_job_folder(tmp_path):
    path = receive(tmp_path, zip_bytes({"model.npz": b"m", "logs/a.txt": b"a"}))
    assert path == str(tmp_path / JOB)
    assert (tmp_path / JOB / "logs" / "a.txt").read_bytes() == b"a"
    assert sorted(os.listdir(tmp_path)) == [JOB]


@pytest.mark.parametrize(
    "entries",
    [
        {"../escape.txt": b"x"},
        {"a/../../escape.txt": b"x"},
        {"/abs.txt": b"x"},
        {"C:/win.txt": b"x"},
        {"a\\b.txt": b"x"},
        {"ctl\x01.txt": b"x"},
        {"a//b.txt": b"x"},
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "drive", "backslash", "control", "empty-part"],
)
def test_a_hostile_entry_name_is_refused_before_anything_is_written(tmp_path, entries):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InternalError, match="refusing to extract"):
        receive(dest, zip_bytes({"fine.txt": b"ok", **entries}))
    assert os.listdir(dest) == []
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_a_symlink_entry_is_refused(tmp_path):
    with pytest.raises(InternalError, match="entry 'passwd' is a symlink"):
        receive(tmp_path, zip_bytes({"a.txt": b"a"}, link="passwd"))
    assert os.listdir(tmp_path) == []


def test_a_result_over_the_caps_is_refused(tmp_path):
    with pytest.raises(InternalError, match="declares more than 4000 uncompressed bytes"):
        receive(
            tmp_path,
            zip_bytes({"big": bytes(5000)}),
            limits=ExtractLimits(max_uncompressed_bytes=4000),
        )
    with pytest.raises(InternalError, match="entries"):
        receive(
            tmp_path,
            zip_bytes({f"f{i}": b"" for i in range(5)}),
            limits=ExtractLimits(max_entries=4),
        )
    assert os.listdir(tmp_path) == []


def test_duplicate_entries_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"1")
        with pytest.warns(UserWarning):
            zf.writestr("a.txt", b"2")
    with pytest.raises(InternalError, match="'a.txt' is a duplicate"):
        receive(tmp_path, buf.getvalue())


def test_a_truncated_or_corrupt_stream_is_refused_and_cleaned(tmp_path):
    data = zip_bytes({"a.txt": b"a"})
    with pytest.raises(InternalError, match="cut short"):
        receive(tmp_path, data, size=len(data) + 1)
    with pytest.raises(InternalError, match="SHA-256"):
        receive(tmp_path, data, sha="00" * 32)
    with pytest.raises(InternalError, match="not a valid zip"):
        receive(tmp_path, b"garbage", size=-1, sha="")
    assert os.listdir(tmp_path) == []


def test_a_new_download_replaces_the_previous_one_whole(tmp_path):
    receive(tmp_path, zip_bytes({"old.txt": b"o"}))
    receive(tmp_path, zip_bytes({"new.txt": b"n"}))
    assert os.listdir(tmp_path / JOB) == ["new.txt"]
    assert os.listdir(tmp_path) == [JOB]


def test_the_destination_must_exist_and_the_default_is_created(tmp_path):
    with pytest.raises(InvalidArgumentError, match="not an existing folder"):
        check_destination(tmp_path / "missing", tmp_path / "transfer")
    assert check_destination(None, tmp_path / "transfer") == tmp_path / "transfer"
    assert (tmp_path / "transfer").is_dir()


# -- download, files-v1: one header per file, written as it arrives -------------------------


def files_stream(files: dict[str, bytes], *, count: int | None = None, total: int | None = None):
    """The messages a server sends for ``files`` (sizes as announced by the data)."""
    yield common_pb2.TransferChunk(
        header=common_pb2.TransferHeader(
            name=JOB,
            size=sum(map(len, files.values())) if total is None else total,
            content_type=FILES_CONTENT_TYPE,
            params={"files": str(len(files) if count is None else count)},
        )
    )
    for name, data in files.items():
        yield common_pb2.TransferChunk(header=common_pb2.TransferHeader(name=name, size=len(data)))
        for i in range(0, len(data), CHUNK_SIZE):
            yield common_pb2.TransferChunk(data=data[i : i + CHUNK_SIZE])


def receive_files(folder: Path, messages, limits: ExtractLimits | None = None) -> str:
    return drain(ResultDownload(folder, JOB, limits or ExtractLimits()), messages)


def test_a_files_stream_is_written_file_by_file_into_the_job_folder(tmp_path):
    big = os.urandom(5 * CHUNK_SIZE + 123)  # over DIRECT_MIN_BYTES: written with O_DIRECT
    path = receive_files(
        tmp_path, files_stream({"model.npz": big, "logs/a.txt": b"a", "empty": b""})
    )
    assert path == str(tmp_path / JOB)
    assert (tmp_path / JOB / "model.npz").read_bytes() == big
    assert (tmp_path / JOB / "logs" / "a.txt").read_bytes() == b"a"
    assert (tmp_path / JOB / "empty").read_bytes() == b""
    assert sorted(os.listdir(tmp_path)) == [JOB]


@pytest.mark.parametrize(
    "name", ["../escape.txt", "a/../../x", "/abs.txt", "C:/win.txt", "a\\b", "ctl\x01", "a//b"]
)
def test_a_hostile_file_name_is_refused_before_it_is_written(tmp_path, name):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InternalError, match="refusing to extract"):
        receive_files(dest, files_stream({"fine.txt": b"ok", name: b"x"}))
    assert os.listdir(dest) == []
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_a_file_longer_than_announced_is_refused(tmp_path):
    messages = list(files_stream({"a.txt": b"abc"}))
    messages.append(common_pb2.TransferChunk(data=b"more"))
    with pytest.raises(InternalError, match="longer than its announced 3 bytes"):
        receive_files(tmp_path, messages)
    assert os.listdir(tmp_path) == []


def test_a_stream_cut_short_is_refused_and_cleaned(tmp_path):
    messages = list(files_stream({"a.txt": b"abc", "b.txt": b"def"}))
    with pytest.raises(InternalError, match="cut short"):
        receive_files(tmp_path, messages[:-1])  # b.txt's data is missing
    with pytest.raises(InternalError, match="1 of 2 files"):
        receive_files(tmp_path, messages[:-2])  # b.txt is missing
    assert os.listdir(tmp_path) == []


def test_a_files_stream_must_keep_to_its_announced_count_and_caps(tmp_path):
    with pytest.raises(InternalError, match="more than the 1 files announced"):
        receive_files(tmp_path, files_stream({"a": b"1", "b": b"2"}, count=1))
    with pytest.raises(InternalError, match="entries"):
        receive_files(
            tmp_path, files_stream({f"f{i}": b"" for i in range(5)}), ExtractLimits(max_entries=4)
        )
    with pytest.raises(InternalError, match="inflates"):  # the announced total, at once
        receive_files(
            tmp_path, files_stream({"big": bytes(5000)}), ExtractLimits(max_uncompressed_bytes=4000)
        )
    with pytest.raises(InternalError, match="inflates"):  # the files' own sizes
        receive_files(
            tmp_path,
            files_stream({"big": bytes(5000)}, total=10),
            ExtractLimits(max_uncompressed_bytes=4000),
        )
    assert os.listdir(tmp_path) == []


def test_a_file_named_twice_is_refused(tmp_path):
    messages = list(files_stream({"a.txt": b"1", "b.txt": b"2"}))
    messages[3].header.name = "a.txt"
    with pytest.raises(InternalError, match="twice"):
        receive_files(tmp_path, messages)
    assert os.listdir(tmp_path) == []


def test_a_stream_without_a_header_is_refused(tmp_path):
    with pytest.raises(InternalError, match="did not start with a header"):
        receive_files(tmp_path, [common_pb2.TransferChunk(data=b"x")])
    with pytest.raises(InternalError, match="before its header"):
        receive_files(tmp_path, [])
    assert os.listdir(tmp_path) == []


def test_a_result_the_server_marks_partial_is_kept_with_a_warning(tmp_path):
    header, *rest = files_stream({"metrics.jsonl": b"{}\n"})
    header.header.params[PARTIAL] = "true"
    sink = ResultDownload(tmp_path, JOB)
    for msg in [header, *rest]:
        sink.feed(msg)
    path = sink.finish()
    with pytest.warns(UserWarning, match=f"result of job {JOB} .* is partial"):
        sink.warn_if_partial(path)
    assert (tmp_path / JOB / "metrics.jsonl").is_file()


def test_a_complete_result_gives_no_warning(tmp_path, recwarn):
    sink = ResultDownload(tmp_path, JOB)
    for msg in files_stream({"summary.json": b"{}"}):
        sink.feed(msg)
    sink.warn_if_partial(sink.finish())
    assert not recwarn.list
