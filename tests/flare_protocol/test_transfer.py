"""The one chunked transfer protocol, without I/O: every rule a receiver keeps, every
check a sender makes, one message per broken rule."""

from __future__ import annotations

import hashlib

import pytest

from flare_protocol._generated import common_pb2
from flare_protocol.errors import (
    BlobError,
    InternalError,
    InvalidArgumentError,
    InvalidJobDefinition,
)
from flare_protocol.transfer import ChunkReceiver, ChunkSender, TransferState

DATA = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(DATA).hexdigest()


def header(size: int = len(DATA), sha256: str = SHA, **kw: object) -> common_pb2.TransferChunk:
    return common_pb2.TransferChunk(
        header=common_pb2.TransferHeader(name="x", size=size, sha256=sha256, **kw)  # type: ignore[arg-type]
    )


def data(payload: bytes) -> common_pb2.TransferChunk:
    return common_pb2.TransferChunk(data=payload)


def stream(
    payload: bytes = DATA, chunk: int = 4096, **kw: object
) -> list[common_pb2.TransferChunk]:
    return [header(**kw)] + [data(payload[i : i + chunk]) for i in range(0, len(payload), chunk)]


def receive(messages: list[common_pb2.TransferChunk], receiver: ChunkReceiver) -> bytes:
    out = b"".join(d for m in messages if (d := receiver.feed(m)) is not None)
    receiver.finish()
    return out


# -- a whole transfer ---------------------------------------------------------------------


def test_a_whole_stream_hands_back_its_bytes_and_ends_done():
    receiver = ChunkReceiver("the blob")
    assert receive(stream(), receiver) == DATA
    assert receiver.state is TransferState.DONE and receiver.received == len(DATA)
    assert receiver.header is not None and receiver.size == len(DATA)


def test_size_and_digest_unknown_up_front_are_not_checked():
    assert receive(stream(size=-1, sha256=""), ChunkReceiver("the result")) == DATA


def test_the_caller_may_hash_elsewhere_or_pass_its_own_digest():
    receiver = ChunkReceiver("the blob", hash_data=False)
    for message in stream():
        if (chunk := receiver.feed(message)) is not None:
            receiver.hash(chunk)  # e.g. in the thread that writes
    receiver.finish()
    passed = ChunkReceiver("the job archive", hash_data=False)
    for message in stream():
        passed.feed(message)
    passed.finish(SHA.upper())  # e.g. computed by the store
    assert passed.state is TransferState.DONE


# -- every broken rule, one message each ---------------------------------------------------


def test_no_header_is_refused():
    with pytest.raises(
        InvalidArgumentError, match="the blob: the stream did not start with a header"
    ):
        ChunkReceiver("the blob").feed(data(b"x"))
    with pytest.raises(InvalidArgumentError, match="the blob: the stream ended before its header"):
        ChunkReceiver("the blob").finish()
    with pytest.raises(InvalidArgumentError, match="ended before its header"):
        ChunkReceiver("the blob").first_header(None)


def test_a_second_header_is_refused():
    receiver = ChunkReceiver("the blob")
    receiver.feed(header())
    with pytest.raises(InvalidArgumentError, match="the blob: a second header in the stream"):
        receiver.feed(header())


def test_a_size_over_the_cap_is_refused_at_the_header_naming_the_setting():
    receiver = ChunkReceiver(
        "the job archive",
        max_bytes=100,
        cap_error=InvalidJobDefinition,
        cap_setting="the server's max_upload_bytes",
    )
    with pytest.raises(InvalidJobDefinition) as info:
        receiver.feed(header())
    assert str(info.value) == (
        f"the job archive is {len(DATA)} bytes; at most 100 are accepted "
        "(set by the server's max_upload_bytes)"
    )
    assert info.value.size == len(DATA)  # type: ignore[attr-defined]
    assert receiver.state is TransferState.FAILED


def test_more_bytes_than_the_cap_are_stopped_when_the_size_was_not_announced():
    receiver = ChunkReceiver("the blob", max_bytes=5000)
    with pytest.raises(InvalidArgumentError, match="the blob exceeds the cap of 5000 bytes"):
        receive(stream(size=-1, sha256=""), receiver)
    assert receiver.received == 4096  # the chunk that crossed the cap was not handed back


def test_a_stream_longer_than_announced_is_stopped_at_once():
    receiver = ChunkReceiver("the blob")
    with pytest.raises(
        InvalidArgumentError, match="the blob is longer than its announced 10 bytes"
    ):
        receive(stream(size=10, sha256=""), receiver)
    assert receiver.received == 0


def test_a_stream_cut_short_is_refused_with_the_remedy():
    receiver = ChunkReceiver("the model", error=InternalError, remedy="download it again")
    with pytest.raises(InternalError) as info:
        receive(stream()[:-1], receiver)
    assert str(info.value) == (
        f"the model was cut short: received 8192 of the announced {len(DATA)} bytes; "
        "download it again"
    )


def test_a_digest_mismatch_is_refused_naming_both_digests():
    receiver = ChunkReceiver("the blob", error=BlobError)
    with pytest.raises(
        BlobError,
        match=f"the blob is corrupt: its SHA-256 {SHA} does not match "
        f"the announced {'ab' * 32}; it was damaged in transit",
    ):
        receive(stream(sha256="ab" * 32), receiver)


def test_a_digest_known_from_elsewhere_is_checked_too():
    receiver = ChunkReceiver("blob 7", error=BlobError, sha256="cd" * 32, size=len(DATA))
    with pytest.raises(BlobError, match="does not match the announced " + "cd" * 32):
        receive(stream(size=-1), receiver)


def test_a_required_size_or_digest_must_be_announced():
    with pytest.raises(InvalidArgumentError, match="must announce its exact size, at most 9 bytes"):
        ChunkReceiver("the log", require_size=True, max_bytes=9).feed(header(size=-1))
    with pytest.raises(InvalidArgumentError, match="must announce its SHA-256"):
        ChunkReceiver("the log", require_sha256=True).feed(header(sha256=""))
    with pytest.raises(InvalidArgumentError, match="must announce its SHA-256"):
        ChunkReceiver("the log").feed(header(sha256="not hex"))


def test_a_chunk_over_the_chunk_size_is_refused():
    receiver = ChunkReceiver("the update", max_chunk=1024)
    receiver.feed(header())
    with pytest.raises(InvalidArgumentError, match="a chunk of 4096 bytes, more than the 1024"):
        receiver.feed(data(DATA[:4096]))


def test_a_message_without_header_or_data_is_refused():
    with pytest.raises(InvalidArgumentError, match="neither a header nor data"):
        ChunkReceiver("the blob").feed(common_pb2.TransferChunk())


def test_a_cancelled_transfer_refuses_whatever_comes_after():
    receiver = ChunkReceiver("the result", error=InternalError, details={"job_id": "j"})
    receiver.feed(header())
    receiver.feed(data(DATA[:100]))
    error = receiver.cancel()
    assert isinstance(error, InternalError) and error.job_id == "j"
    assert str(error) == "the result: the transfer was cancelled after 100 bytes"
    with pytest.raises(InternalError, match="failed or was cancelled"):
        receiver.feed(data(DATA[100:200]))
    with pytest.raises(InternalError, match="failed or was cancelled"):
        receiver.finish()


def test_errors_carry_the_callers_details():
    receiver = ChunkReceiver("the result", error=InternalError, details={"job_id": "j-1"})
    with pytest.raises(InternalError) as info:
        receiver.finish()
    assert info.value.job_id == "j-1"


# -- the sender -----------------------------------------------------------------------------


def test_a_sender_streams_what_a_receiver_accepts():
    sender = ChunkSender("the blob", name="b", size=len(DATA), sha256=SHA, chunk_size=4096)
    blocks = [DATA[i : i + 4096] for i in range(0, len(DATA), 4096)]
    messages = list(sender.messages(blocks))
    assert messages[0].header.size == len(DATA) and messages[0].header.name == "b"
    assert receive(messages, ChunkReceiver("the blob")) == DATA


def test_a_sender_splits_a_payload_held_in_memory():
    sender = ChunkSender("the model", size=len(DATA), chunk_size=3000)
    chunks = [m.data for m in sender.split(memoryview(DATA))]
    sender.finish()
    assert [len(c) for c in chunks] == [3000, 3000, 3000, 1240] and b"".join(chunks) == DATA


def test_a_sender_says_how_much_to_read_next():
    sender = ChunkSender("the file", size=5000, chunk_size=4096)
    assert sender.next_read() == 4096
    sender.data(bytes(4096))
    assert sender.next_read() == 904
    sender.data(bytes(904))
    assert sender.next_read() == 0
    assert ChunkSender("a zip being written").next_read() == 1024 * 1024


def test_a_source_that_shrinks_or_grows_while_sent_is_an_error():
    shrunk = ChunkSender("model.npz", size=10)
    shrunk.data(b"12345")
    with pytest.raises(
        InternalError, match="model.npz shrank while it was being sent: 5 of the announced 10"
    ):
        shrunk.finish()
    with pytest.raises(InvalidJobDefinition, match="job.zip grew while it was being sent"):
        ChunkSender("job.zip", size=3, error=InvalidJobDefinition).data(b"1234")
