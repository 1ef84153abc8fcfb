"""Fuzzing the Client API frames between a site and its user code: whatever bytes the user
code writes, the site reads whole JSON objects with an ``op`` or ends the connection
quietly (FrameError, a short read); nothing else escapes the reader."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import FrameError
from flare_site.client import _ipc
from flare_site.executors.base import IpcServer
from tests.fuzzing import hostile_json_texts, json_values, mutated_bytes

messages = st.fixed_dictionaries(
    {"op": st.text(max_size=10)}, optional={"a": json_values, "b": json_values}
)


@given(messages)
def test_a_frame_decodes_to_the_message_it_encodes(message: dict[str, Any]) -> None:
    frame = _ipc.encode_frame(message)
    length = _ipc.frame_length(frame[:4])
    assert length == len(frame) - 4
    assert _ipc.decode_body(frame[4:]) == message


@given(hostile_json_texts)
@example(b"[" * 50_000)  # bug: RecursionError escaped decode_body
@example(b'{"op": "x", "n": ' + b"9" * 5000 + b"}")  # bug: ValueError (int digit limit)
def test_any_body_is_a_message_or_a_frame_error(body: bytes) -> None:
    try:
        message = _ipc.decode_body(body)
    except FrameError:
        return
    assert isinstance(message, dict) and isinstance(message["op"], str)


@given(st.binary(min_size=4, max_size=4))
def test_any_header_is_a_length_within_the_cap_or_a_frame_error(header: bytes) -> None:
    try:
        length = _ipc.frame_length(header)
    except FrameError:
        assert struct.unpack(">I", header)[0] > _ipc.MAX_FRAME
    else:
        assert 0 <= length <= _ipc.MAX_FRAME


def _frames(*messages: dict[str, Any]) -> bytes:
    return b"".join(_ipc.encode_frame(m) for m in messages)


_VALID_STREAM = _frames({"op": "next"}, {"op": "metric", "key": "loss", "value": 0.5})


def _serve(stream: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Send ``stream`` after a good hello to a real IpcServer over its Unix socket; return
    the messages its handler got and what reached the loop's exception handler."""

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        got: list[dict[str, Any]] = []

        async def handler(message: dict[str, Any]) -> None:
            got.append(message)

        server = IpcServer(handler)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(_frames({"op": "hello", "token": server.token}) + stream)
            writer.write_eof()
            await writer.drain()
            await reader.read()  # until the site closes its end
            writer.close()
            for _ in range(100):  # the connection's task ends right after closing
                if not server._connections:
                    break
                await asyncio.sleep(0.001)
        finally:
            await server.close()
        return got, unhandled

    return asyncio.run(main())


def test_the_site_reads_every_frame_of_a_valid_stream() -> None:
    got, unhandled = _serve(_VALID_STREAM)
    assert [m["op"] for m in got] == ["next", "metric"] and not unhandled


@given(
    st.one_of(
        mutated_bytes(_VALID_STREAM),
        hostile_json_texts.map(lambda body: struct.pack(">I", len(body)) + body),
        st.binary(max_size=64),
    )
)
@example(struct.pack(">I", 50_000) + b"[" * 50_000)  # bug: RecursionError ended the reader task
def test_the_site_reads_any_stream_into_messages_or_ends_it_quietly(stream: bytes) -> None:
    got, unhandled = _serve(stream)
    assert not unhandled, [c.get("exception") for c in unhandled]
    assert all(isinstance(m, dict) and isinstance(m["op"], str) for m in got)
    assert json.dumps(got)  # every message the handler saw is plain JSON
