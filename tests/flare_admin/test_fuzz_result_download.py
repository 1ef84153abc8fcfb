"""Fuzzing result downloads in the Session: a result folder the server streams arrives
whole, in either format; any stream a server sends instead ends in InternalError (or
LocalIOError), writes nothing outside ``<folder>/<job_id>`` and leaves nothing behind when
it fails. The same for the server's error trailer."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from flare_admin._download import ExtractLimits, ResultDownload
from flare_protocol import errors
from flare_protocol._generated import common_pb2
from flare_protocol.result_format import FILES_CONTENT_TYPE
from flare_protocol.wire_errors import wire_attributes
from flare_server.result_stream import files_stream
from tests.fuzzing import fewer_examples, hostile_names
from tests.zip_fuzzing import hostile_zips, zip_bytes

JOB = "0b6a4c1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b"
LIMITS = ExtractLimits(max_entries=20, max_uncompressed_bytes=64 * 1024)

file_names = st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}\.[a-z]{1,3}", fullmatch=True)
results = st.dictionaries(file_names, st.binary(max_size=300), max_size=5).filter(
    lambda files: not any(a.startswith(b.rsplit(".", 1)[0] + "/") for a in files for b in files)
)


@contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-result-") as name:
        yield Path(name)


def _server_stream(files: dict[str, bytes]) -> list[common_pb2.TransferChunk]:
    """The messages the server sends for a result folder holding ``files``."""
    with _folder() as root:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)

        async def collect() -> list[common_pb2.TransferChunk]:
            return [m async for m in files_stream(root, JOB)]

        return asyncio.run(collect())


def _receive(messages: list[common_pb2.TransferChunk], folder: Path) -> str:
    download = ResultDownload(folder, JOB, LIMITS)
    try:
        for message in messages:
            download.feed(message)
        return download.finish()
    except BaseException:
        download.discard()
        raise


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@given(results)
@fewer_examples()
def test_a_result_folder_arrives_whole(files: dict[str, bytes]) -> None:
    stream = _server_stream(files)
    with _folder() as folder:
        assert _tree(Path(_receive(stream, folder))) == files


def _zip_stream(data: bytes) -> list[common_pb2.TransferChunk]:
    head = common_pb2.TransferChunk(
        header=common_pb2.TransferHeader(name=JOB, size=len(data), content_type="application/zip")
    )
    return [
        head,
        *(common_pb2.TransferChunk(data=data[i : i + 100]) for i in range(0, len(data), 100)),
    ]


@given(results)
@fewer_examples()
def test_a_zipped_result_arrives_whole(files: dict[str, bytes]) -> None:
    with _folder() as folder:
        assert _tree(Path(_receive(_zip_stream(zip_bytes(files)), folder))) == files


def _header(message: common_pb2.TransferChunk) -> common_pb2.TransferHeader:
    return message.header


#: Streams the server sent for a few result folders (made once: each costs a thread).
_STREAMS = st.sampled_from(
    [
        _server_stream(files)
        for files in (
            {},
            {"summary.json": b"{}"},
            {"summary.json": b"{}", "site-1/log.txt": b"line\n" * 50, "model.npz": b"\0" * 300},
            {"a/b/c.txt": b"x", "a/d.txt": b"", "e.bin": bytes(range(256))},
        )
    ]
)


@st.composite
def bent_streams(draw: st.DrawFn) -> list[common_pb2.TransferChunk]:
    """A server's files-v1 stream bent: a header's name, size or file count changed,
    messages dropped, repeated or swapped, data changed."""
    stream = [common_pb2.TransferChunk.FromString(m.SerializeToString()) for m in draw(_STREAMS)]
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(stream) - 1))
        message = stream[at]
        kind = draw(
            st.sampled_from(["name", "size", "count", "drop", "dup", "swap", "data", "type"])
        )
        if kind == "name" and message.HasField("header"):
            message.header.name = draw(hostile_names)
        elif kind == "size" and message.HasField("header"):
            message.header.size = draw(st.sampled_from([-5, -1, 0, 1, 2**40, 2**63 - 1]))
        elif kind == "count":
            stream[0].header.params["files"] = draw(
                st.sampled_from(["", "-1", "²", "٣", "1e3", "99999999999", " 1", "0x1", "1" * 5000])
            )
        elif kind == "drop":
            del stream[at]
        elif kind == "dup":
            stream.insert(at, message)
        elif kind == "swap" and at + 1 < len(stream):
            stream[at], stream[at + 1] = stream[at + 1], stream[at]
        elif kind == "type":
            stream[0].header.content_type = draw(st.sampled_from(["", "application/zip", "x"]))
        elif message.HasField("data"):
            message.data = draw(st.binary(max_size=40))
        if not stream:
            break
    return stream


def _refused_or_inside(stream: list[common_pb2.TransferChunk]) -> None:
    with _folder() as folder:
        try:
            path = _receive(stream, folder)
        except (errors.InternalError, errors.LocalIOError) as exc:
            assert exc.message
            assert os.listdir(folder) == [], "a failed download left something behind"
            return
        assert Path(path) == folder / JOB
        assert os.listdir(folder) == [JOB]
        assert not any(p.is_symlink() for p in (folder / JOB).rglob("*"))


@given(bent_streams())
@example(  # bug: ValueError: '²' passes str.isdigit() but int() refuses it
    [
        common_pb2.TransferChunk(
            header=common_pb2.TransferHeader(
                name=JOB, size=0, content_type=FILES_CONTENT_TYPE, params={"files": "²"}
            )
        )
    ]
)
def test_any_files_stream_is_a_result_or_internal_error(
    stream: list[common_pb2.TransferChunk],
) -> None:
    _refused_or_inside(stream)


_VALID_ZIP = zip_bytes({"summary.json": b"{}", "site-1/log.txt": b"log", "global_model.npz": b"x"})


def _with_entry_flags(data: bytes, name: bytes, flags: bytes) -> bytes:
    """``data`` with the general-purpose flags of ``name``'s local header replaced (the
    first occurrence of a name is in its local header, 30 bytes after the header starts)."""
    header = data.index(name) - 30
    assert data[header : header + 4] == b"PK\x03\x04"
    return data[: header + 6] + flags + data[header + 8 :]


@given(hostile_zips(_VALID_ZIP))
# found: a local header whose flags say UTF-8 for a name that is not (UnicodeDecodeError)
@example(_with_entry_flags(_VALID_ZIP, b"global_model.npz", b"\xff\xff"))
def test_any_zipped_result_is_a_result_or_internal_error(data: bytes) -> None:
    _refused_or_inside(_zip_stream(data))


_DECLARED_INT = {"size": "", "status": "", "job_id": "", "path": ""}


@given(
    st.sampled_from(sorted(errors.WIRE_ERRORS)),
    st.dictionaries(
        st.sampled_from(["size", "job_id", "path", "status", "site", "returncode"]),
        st.one_of(st.text(max_size=8), st.sampled_from(["²", "--5", "-", "١٢", "1" * 5000])),
        max_size=4,
    ),
)
@example("InvalidJobDefinition", {"size": "²"})  # bug: ValueError: int('²')
@example("InvalidJobDefinition", {"size": "--5"})  # bug: ValueError: int('--5')
def test_any_error_trailer_attributes_become_text_or_numbers(name: str, details: Any) -> None:
    cls = errors.WIRE_ERRORS[name]
    attributes = wire_attributes(cls, details)
    error = cls("from the server", **attributes)
    for key, value in attributes.items():
        assert getattr(error, key) == value and isinstance(value, (str, int))
