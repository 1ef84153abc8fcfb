"""Fuzzing the arguments of the admin Command RPC against a real server over mTLS: any
``args_json`` a project admin sends to a read-only command is answered, or refused with
a typed error; never the InternalError of an unexpected exception on the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol import errors
from flare_protocol._generated import admin_pb2, admin_pb2_grpc
from flare_protocol.wire_errors import decode_detail
from provisioning import ProvisionResult
from tests.fuzzing import fewer_examples, hostile_json_texts, mutated_json
from tests.server_harness import ServerThread, admin_stub

JOB = "0b6a4c1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b"
#: Commands that change nothing (shutdown, restart and reset_errors are left out).
COMMANDS = {
    "pwd": {"target": "server"},
    "ls": {"target": "server", "path": "notes"},
    "cat": {"target": "server", "path": "notes/a.txt"},
    "head": {"target": "server", "path": "notes/a.txt", "lines": 2},
    "tail": {"target": "server", "path": "notes/a.txt", "lines": 2},
    "grep": {"target": "server", "path": "notes/a.txt", "pattern": "line 1"},
    "show_stats": {},
    "show_errors": {"job_id": JOB},
    "get_client_job_status": {"job_id": JOB},
    "job_metrics": {"job_id": JOB},
    "job_params": {"job_id": JOB},
    "job_messages": {"job_id": JOB},
    "job_validations": {"job_id": JOB},
    "job_summary": {"job_id": JOB},
    "job_logs": {"job_id": JOB, "target": "server"},
}


@pytest.fixture(scope="module")
def admin(
    provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[admin_pb2_grpc.AdminStub]:
    """A project admin's stub on a real server whose workspace holds notes/a.txt."""
    workspace = tmp_path_factory.mktemp("fuzz-commands") / "ws"
    with ServerThread(Path(provisioned.kits["localhost"]), workspace) as server:
        (server.server.workspace / "notes").mkdir()
        (server.server.workspace / "notes" / "a.txt").write_text("line 1\nline 2\n")
        stub, channel = admin_stub(Path(provisioned.kits["admin@org_a.com"]), server.admin_address)
        with channel:
            yield stub


def _answered_or_typed(stub: admin_pb2_grpc.AdminStub, command: str, args_json: str) -> None:
    try:
        reply = stub.Command(
            admin_pb2.CommandRequest(command=command, args_json=args_json), timeout=10
        )
    except grpc.RpcError as exc:
        detail = decode_detail(exc.trailing_metadata())
        assert detail is not None, exc
        assert detail.type in errors.WIRE_ERRORS and detail.type != "InternalError", (
            detail.type,
            detail.message,
        )
        return
    json.loads(reply.result_json)


def test_every_seed_command_is_answered_or_refused(admin: admin_pb2_grpc.AdminStub) -> None:
    for command, args in COMMANDS.items():
        _answered_or_typed(admin, command, json.dumps(args))


arguments = st.sampled_from(sorted(COMMANDS)).flatmap(
    lambda command: st.tuples(
        st.just(command),
        st.one_of(
            mutated_json(COMMANDS[command], max_mutations=3).map(json.dumps),
            hostile_json_texts.map(lambda b: b.decode("utf-8", "replace")[:60_000]),
        ),
    )
)


@given(arguments)
@fewer_examples(2)
@example(("pwd", "[" * 50_000))  # bug: RecursionError: the server's InternalError
@example(("pwd", '{"lines": ' + "9" * 5000 + "}"))  # bug: ValueError: InternalError
def test_any_arguments_are_answered_or_refused_with_a_typed_error(
    admin: admin_pb2_grpc.AdminStub, case: tuple[str, Any]
) -> None:
    _answered_or_typed(admin, *case)
