"""Fuzzing the chunked transfer protocol: what a sender sends, a receiver takes whole; any
sequence of messages a peer sends instead ends in the error class the receiver was given,
and a transfer that completes delivered exactly what its header announced."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from flare_protocol._generated import common_pb2
from flare_protocol.errors import BlobError, FlareError, InvalidArgumentError
from flare_protocol.transfer import ChunkReceiver, ChunkSender


@given(st.binary(max_size=2000), st.integers(1, 300), st.booleans())
def test_what_a_sender_sends_a_receiver_takes_whole(
    payload: bytes, chunk: int, announce: bool
) -> None:
    digest = hashlib.sha256(payload).hexdigest() if announce else ""
    sender = ChunkSender(
        "payload", size=len(payload) if announce else -1, sha256=digest, chunk_size=chunk
    )
    receiver = ChunkReceiver(
        "payload", require_size=announce, require_sha256=announce, max_chunk=chunk
    )
    received = b""
    for message in [sender.header(), *sender.split(payload)]:
        received += receiver.feed(message) or b""
    sender.finish()
    receiver.finish()
    assert received == payload and receiver.received == len(payload)


_SIZES = st.sampled_from([-(2**63), -2, -1, 0, 1, 5, 64, 2**31, 2**63 - 1])
_DIGESTS = st.one_of(
    st.sampled_from(["", "0" * 64, "F" * 64, "g" * 64, "0" * 63, "0" * 65, "é" * 64]),
    st.binary(max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()),
)
headers = st.builds(
    lambda size, sha, name: common_pb2.TransferChunk(
        header=common_pb2.TransferHeader(size=size, sha256=sha, name=name)
    ),
    _SIZES,
    _DIGESTS,
    st.text(max_size=10),
)
messages = st.one_of(
    headers,
    st.binary(max_size=80).map(lambda b: common_pb2.TransferChunk(data=b)),
    st.just(common_pb2.TransferChunk()),  # neither a header nor data
)


@given(
    st.lists(messages, max_size=8),
    st.sampled_from([InvalidArgumentError, BlobError]),
    st.none() | st.integers(0, 200),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(1, 64),
)
def test_any_stream_ends_in_the_receivers_error_or_delivers_what_it_announced(
    stream: list[common_pb2.TransferChunk],
    error: type[FlareError],
    cap: int | None,
    require_size: bool,
    require_sha256: bool,
    max_chunk: int | None,
) -> None:
    receiver = ChunkReceiver(
        "payload",
        error=error,
        max_bytes=cap,
        require_size=require_size,
        require_sha256=require_sha256,
        max_chunk=max_chunk,
    )
    received = b""
    try:
        for message in stream:
            received += receiver.feed(message) or b""
        receiver.finish()
    except FlareError as exc:
        assert isinstance(exc, error), exc
        return
    header = receiver.header
    assert header is not None
    if header.size >= 0:
        assert len(received) == header.size
    if header.sha256:
        assert hashlib.sha256(received).hexdigest() == header.sha256.lower()
    assert cap is None or len(received) <= cap
