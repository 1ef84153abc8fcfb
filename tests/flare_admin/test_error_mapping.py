"""One function maps every gRPC failure to the most specific flare exception."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from flare_admin._errors import STATUS_FALLBACK, map_rpc_error
from flare_protocol import errors
from flare_protocol.wire_errors import encode_error

ADDRESS = "127.0.0.1:8103"

#: What each status code becomes when the server sent no ErrorDetail (an ordinary call).
EXPECTED = {
    grpc.StatusCode.OK: errors.InternalError,
    grpc.StatusCode.CANCELLED: errors.NoConnection,
    grpc.StatusCode.UNKNOWN: errors.InternalError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.NoReply,
    grpc.StatusCode.NOT_FOUND: errors.JobNotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.InvalidArgumentError,
    grpc.StatusCode.PERMISSION_DENIED: errors.AuthorizationError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.APIError,
    grpc.StatusCode.ABORTED: errors.APIError,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgumentError,
    grpc.StatusCode.UNIMPLEMENTED: errors.InternalError,
    grpc.StatusCode.INTERNAL: errors.InternalError,
    grpc.StatusCode.UNAVAILABLE: errors.NoConnection,
    grpc.StatusCode.DATA_LOSS: errors.InternalError,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
}


def rpc_error(code: grpc.StatusCode, details: str = "", trailer: tuple = ()) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(*trailer), details)


def test_every_status_code_has_a_mapping():
    assert set(EXPECTED) == set(grpc.StatusCode) == set(STATUS_FALLBACK)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_a_status_code_without_detail_maps_to_its_exception(code):
    exc = map_rpc_error(rpc_error(code, "boom"), address=ADDRESS, action="get_job_meta")
    assert type(exc) is EXPECTED[code]
    assert isinstance(exc, errors.APIError)
    assert exc.status_code == code.name
    assert str(exc)


@pytest.mark.parametrize("name", sorted(errors.WIRE_ERRORS))
def test_a_wire_error_detail_gives_exactly_that_class_with_its_attributes(name):
    cls = errors.WIRE_ERRORS[name]
    code, message, trailer = encode_error(cls(f"{name} happened", job_id="abc", site="site-1"))
    exc = map_rpc_error(rpc_error(code, message, trailer), address=ADDRESS, action="x")
    assert type(exc) is cls
    assert exc.message == f"{name} happened"
    assert exc.job_id == "abc" and exc.site == "site-1"


def test_a_detail_wins_over_the_status_code():
    _, message, trailer = encode_error(errors.JobNotDone("still RUNNING", status="RUNNING"))
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.INTERNAL, message, trailer), address=ADDRESS, action="x"
    )
    assert isinstance(exc, errors.JobNotDone) and exc.status == "RUNNING"


def test_an_unknown_detail_type_falls_back_to_the_status_code():
    from flare_protocol._generated import common_pb2

    detail = common_pb2.ErrorDetail(type="os.system", message="no")
    trailer = (("flare-error-bin", detail.SerializeToString()),)
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.NOT_FOUND, "nf", trailer), address=ADDRESS, action="x"
    )
    assert type(exc) is errors.JobNotFound


def test_a_malformed_trailer_is_ignored():
    trailer = (("flare-error-bin", b"\xff\xff\xff"),)
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.PERMISSION_DENIED, "no", trailer), address=ADDRESS, action="x"
    )
    assert type(exc) is errors.AuthorizationError


def test_detail_keys_cannot_overwrite_internals():
    from flare_protocol._generated import common_pb2

    detail = common_pb2.ErrorDetail(
        type="JobNotFound",
        message="gone",
        details={"__class__": "x", "message": "forged", "args": "x", "job_id": "j1"},
    )
    trailer = (("flare-error-bin", detail.SerializeToString()),)
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.NOT_FOUND, "gone", trailer), address=ADDRESS, action="x"
    )
    assert type(exc) is errors.JobNotFound
    assert exc.message == "gone" and exc.job_id == "j1"


def test_the_callers_job_id_is_attached_when_the_server_sent_none():
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.NOT_FOUND, "nf"), address=ADDRESS, action="x", job_id="j9"
    )
    assert exc.job_id == "j9"


def test_unavailable_names_the_address():
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect: Connection refused"),
        address=ADDRESS,
        action="open session",
        opening=True,
    )
    assert isinstance(exc, errors.NoConnection) and isinstance(exc, ConnectionError)
    assert ADDRESS in str(exc) and exc.address == ADDRESS


def test_a_refused_handshake_after_preflight_names_the_likely_causes():
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.UNAVAILABLE, "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED"),
        address=ADDRESS,
        action="open session",
        opening=True,
    )
    assert isinstance(exc, errors.NoConnection)
    assert "root CA differs" in str(exc) and "revoked" in str(exc)


def test_a_deadline_while_opening_is_no_connection():
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        address=ADDRESS,
        action="open session",
        opening=True,
    )
    assert type(exc) is errors.NoConnection and ADDRESS in str(exc)


def test_resource_exhausted_on_upload_is_an_invalid_job_definition():
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"),
        address=ADDRESS,
        action="submit_job",
        submitting=True,
    )
    assert type(exc) is errors.InvalidJobDefinition


def test_a_busy_server_is_no_reply():
    exc = map_rpc_error(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!"),
        address=ADDRESS,
        action="list_jobs",
    )
    assert type(exc) is errors.NoReply


def test_a_deadline_tells_how_to_raise_the_timeout():
    exc = map_rpc_error(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), address=ADDRESS, action="x")
    assert "set_timeout" in str(exc)


def test_declared_numbers_come_back_as_numbers_across_the_wire():
    sent = errors.InvalidJobDefinition("too big", size=3_000_000_000, path="job.zip", field="x")
    code, message, trailer = encode_error(sent)
    got = map_rpc_error(rpc_error(code, message, trailer), address=ADDRESS, action="submit_job")
    assert isinstance(got, errors.InvalidJobDefinition)
    assert got.size == 3_000_000_000 and got.path == "job.zip" and got.field == "x"
    assert got.status_code == grpc.StatusCode.INVALID_ARGUMENT.name
