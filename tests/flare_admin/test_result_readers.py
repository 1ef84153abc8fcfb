"""The Session's result readers: metrics, validations, models, continue-from-a-model.

Argument checks happen before any call; reply parsing treats the server's rows as
untrusted JSON. The readers against real job results are in tests/e2e/.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from flare_admin import (
    AsyncSession,
    AuthorizationError,
    InvalidArgumentError,
    InvalidTarget,
    JobNotDone,
    JobNotFound,
    MetricRow,
    Session,
    ValidationRow,
    _ops,
    rounds_table,
)
from flare_admin._download import ModelDownload, model_target
from flare_protocol._generated import common_pb2
from flare_protocol.errors import InternalError
from tests.flare_admin.conftest import drain

JOB = str(uuid.uuid4())


# -- typed rows ----------------------------------------------------------------------------


def test_metric_row_reads_a_server_row_and_is_also_a_mapping():
    row = MetricRow.from_dict(
        {"site": "site-1", "round": 2, "key": "loss", "value": 0.5, "step": 7, "time": 1.5}
    )
    assert (row.site, row.round, row.key, row.value, row.step, row.time) == (
        "site-1",
        2,
        "loss",
        0.5,
        7,
        1.5,
    )
    assert row["key"] == "loss"
    assert row.to_dict() == {
        "site": "site-1",
        "round": 2,
        "key": "loss",
        "value": 0.5,
        "step": 7,
        "time": 1.5,
    }


def test_metric_row_coerces_untrusted_types_instead_of_failing():
    row = MetricRow.from_dict({"site": 3, "round": "2", "key": "k", "value": "x", "step": True})
    assert row.site == "3"
    assert row.round is None and row.step is None
    assert math.isnan(row.value)


def test_validation_row_keeps_only_numeric_metrics():
    row = ValidationRow.from_dict(
        {"site": "site-2", "round": 1, "metrics": {"mse": 0.25, "note": "hi", "ok": True}}
    )
    assert row.metrics == {"mse": 0.25}
    assert row.to_dict() == {"site": "site-2", "round": 1, "metrics": {"mse": 0.25}}


def test_rounds_table_keeps_the_last_value_per_round_site_and_key():
    metrics = [
        MetricRow("site-1", 1, "loss", 3.0, 0),
        MetricRow("site-1", 1, "loss", 2.0, 1),
        MetricRow("site-2", 1, "loss", 4.0, 1),
        MetricRow("site-1", 2, "loss", 1.0, 0),
        MetricRow("site-1", None, "startup", 1.0),
    ]
    validations = [ValidationRow("site-2", 2, {"mse": 0.1, "val_acc": 0.9})]
    assert rounds_table(metrics, validations) == {
        1: {"site-1": {"loss": 2.0}, "site-2": {"loss": 4.0}},
        2: {"site-1": {"loss": 1.0}, "site-2": {"val:mse": 0.1, "val_acc": 0.9}},
    }


# -- request building ----------------------------------------------------------------------


def test_metrics_page_request_names_the_filters():
    op = _ops.job_metrics(JOB.upper(), "site-1", "loss", 20)
    assert op.rpc == "Command" and op.request.command == "job_metrics"
    import json

    assert json.loads(op.request.args_json) == {
        "job_id": JOB,
        "site": "site-1",
        "key": "loss",
        "offset": 20,
        "limit": _ops.PAGE_ROWS,
    }


def test_a_page_without_rows_is_an_internal_error():
    from flare_protocol._generated import admin_pb2

    parse = _ops.job_validations(JOB).parse
    with pytest.raises(InternalError, match="rows"):
        parse(admin_pb2.CommandReply(result_json='{"next_offset": null}'))
    page = parse(
        admin_pb2.CommandReply(
            result_json='{"rows": [{"site": "s", "round": 1, "metrics": {"a": 1}}, 5], '
            '"next_offset": 1}'
        )
    )
    assert page.rows == [ValidationRow("s", 1, {"a": 1.0})] and page.next_offset == 1


def test_clone_request_carries_the_initial_model_job():
    other = str(uuid.uuid4())
    assert _ops.clone_job(JOB, other).request.initial_model_job_id == other
    assert _ops.clone_job(JOB).request.initial_model_job_id == ""


# -- argument checks happen before any call ------------------------------------------------


def test_readers_refuse_a_malformed_job_id(session: Session):
    with pytest.raises(InvalidArgumentError, match="malformed"):
        session.get_job_metrics("nope")
    with pytest.raises(InvalidArgumentError, match="malformed"):
        session.get_validations("nope")
    with pytest.raises(InvalidArgumentError, match="malformed"):
        session.download_model("nope")


@pytest.mark.parametrize("bad", [-1, 1.0, "3", True])
def test_readers_refuse_a_bad_start(session: Session, bad: Any):
    with pytest.raises(InvalidArgumentError, match="start"):
        session.get_job_metrics(JOB, start=bad)
    with pytest.raises(InvalidArgumentError, match="start"):
        session.get_validations(JOB, start=bad)


def test_readers_refuse_a_bad_site_filter(session: Session):
    with pytest.raises(InvalidTarget):
        session.get_job_metrics(JOB, site="../x")
    with pytest.raises(InvalidTarget):
        session.get_validations(JOB, site="server")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_download_model_refuses_a_bad_round(session: Session, bad: Any):
    with pytest.raises(InvalidArgumentError, match="round"):
        session.download_model(JOB, round=bad)


def test_download_model_refuses_a_missing_destination_folder(session: Session, tmp_path: Path):
    with pytest.raises(InvalidArgumentError, match="not an existing folder"):
        session.download_model(JOB, tmp_path / "missing")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        session.download_model(JOB, tmp_path / "missing" / "m.npz")


def test_continue_from_a_malformed_job_id_is_refused(session: Session, job_folder: Path):
    with pytest.raises(InvalidArgumentError, match="malformed"):
        session.submit_job(job_folder, initial_model_job_id="nope")
    with pytest.raises(InvalidArgumentError, match="malformed"):
        session.clone_job(JOB, initial_model_job_id="nope")


async def test_async_readers_check_arguments_alike(server: Any, admin_kit: Path):
    async with await AsyncSession.open(
        "admin@org_a.com", admin_kit, server_address=server.admin_address
    ) as s:
        with pytest.raises(InvalidArgumentError):
            await s.get_job_metrics("nope")
        with pytest.raises(InvalidTarget):
            await s.get_validations(JOB, site="a b")
        with pytest.raises(InvalidArgumentError, match="round"):
            await s.download_model(JOB, round=0)
    await asyncio.sleep(0)


# -- where models go -----------------------------------------------------------------------


def test_models_go_next_to_results_never_inside_them(tmp_path: Path):
    assert model_target(None, tmp_path, _ops.model_file_name(JOB, 0)) == (
        tmp_path / f"{JOB}.global_model.npz"
    )
    assert _ops.model_file_name(JOB, 3) == f"{JOB}.round_003.npz"
    assert model_target(tmp_path / "m.npz", tmp_path / "x", "ignored") == tmp_path / "m.npz"


def model_stream(data: bytes, size: int, sha: str) -> list[common_pb2.TransferChunk]:
    head = common_pb2.TransferHeader(name="m.npz", size=size, sha256=sha)
    return [common_pb2.TransferChunk(header=head)] + [
        common_pb2.TransferChunk(data=data[:500]),
        common_pb2.TransferChunk(data=data[500:]),
    ]


def download_model_file(target: Path, messages: list[common_pb2.TransferChunk]) -> str:
    return drain(ModelDownload(target, "the model"), messages)


def test_a_model_download_is_whole_or_absent(tmp_path: Path):
    import hashlib

    data = b"PK" + bytes(1000)
    sha = hashlib.sha256(data).hexdigest()
    assert (
        Path(
            download_model_file(tmp_path / "ok.npz", model_stream(data, len(data), sha))
        ).read_bytes()
        == data
    )
    with pytest.raises(InternalError, match="cut short"):
        download_model_file(tmp_path / "short.npz", model_stream(data, len(data) + 1, ""))
    with pytest.raises(InternalError, match="corrupt"):
        download_model_file(tmp_path / "bad.npz", model_stream(data, len(data), "0" * 64))
    with pytest.raises(InternalError, match="longer than its announced 4 bytes"):
        download_model_file(tmp_path / "big.npz", model_stream(data, 4, ""))
    with pytest.raises(InternalError, match="did not start with a header"):
        download_model_file(tmp_path / "nohead.npz", model_stream(data, 4, "")[1:])
    with pytest.raises(InternalError, match="ended before its header"):
        download_model_file(tmp_path / "empty.npz", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.npz"]


# -- continue from a model: checked before the upload, refused at the header ----------------


def test_continue_from_an_unknown_job_is_job_not_found(session: Session, job_folder: Path):
    with pytest.raises(JobNotFound):
        session.submit_job(job_folder, initial_model_job_id=JOB)


def test_continue_from_an_unfinished_job_is_job_not_done_before_any_upload(
    session: Session, job_folder: Path
):
    running = session.submit_job(job_folder)
    before = len(session.list_jobs())
    with pytest.raises(JobNotDone) as info:
        session.submit_job(job_folder, initial_model_job_id=running)
    assert info.value.status == "SUBMITTED" or info.value.status == "DISPATCHED"
    assert len(session.list_jobs()) == before


@pytest.fixture
def completed_job(server: Any, session: Session, job_folder: Path) -> str:
    from flare_protocol.models import dump_params
    from tests.flare_admin.conftest import finish_with_result

    job_id = session.submit_job(job_folder)
    model = dump_params({"w": __import__("numpy").zeros(3)})
    finish_with_result(server, job_id, {"global_model.npz": model})
    return job_id


def test_a_refusal_at_the_header_is_the_servers_error_whatever_the_timing(
    open_session: Any, completed_job: str, job_folder: Path
):
    lead_b = open_session("lead@org_b.com")  # may submit, may not reuse admin's model
    for _ in range(30):  # the refusal races the upload's end: both orders are covered
        with pytest.raises(AuthorizationError):
            lead_b.submit_job(job_folder, initial_model_job_id=completed_job)


async def test_async_refusal_at_the_header_is_the_servers_error_whatever_the_timing(
    server: Any, kits: dict[str, Path], completed_job: str, job_folder: Path
):
    async with await AsyncSession.open(
        "lead@org_b.com", kits["lead@org_b.com"], server_address=server.admin_address
    ) as lead_b:
        for _ in range(30):  # grpc.aio sometimes hides this refusal as INTERNAL: retried
            with pytest.raises(AuthorizationError):
                await lead_b.submit_job(job_folder, initial_model_job_id=completed_job)


async def test_async_continue_checks_the_model_source_first(
    server: Any, admin_kit: Path, job_folder: Path
):
    async with await AsyncSession.open(
        "admin@org_a.com", admin_kit, server_address=server.admin_address
    ) as s:
        with pytest.raises(JobNotFound):
            await s.submit_job(job_folder, initial_model_job_id=JOB)
