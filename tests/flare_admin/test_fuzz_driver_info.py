"""Fuzzing what a driver takes from the server's ``DriverInfo``: any run_config text gives
driver settings or an InternalError (the server's fault), never another exception."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from flare_admin._driver import DriverInfo
from flare_protocol._generated import admin_pb2
from flare_protocol.errors import InternalError
from tests.fuzzing import hostile_json_texts


@given(hostile_json_texts.map(lambda b: b.decode("utf-8", "replace")), st.floats(allow_nan=True))
@example("[" * 50_000, 60.0)  # bug: RecursionError escaped DriverInfo.from_reply
def test_any_driver_info_gives_settings_or_internal_error(run_config: str, ttl: float) -> None:
    reply = admin_pb2.DriverInfo(job_id="j", run_config_json=run_config, default_ttl=ttl)
    try:
        info = DriverInfo.from_reply(reply)
    except InternalError as exc:
        assert "run_config" in exc.message
    else:
        assert isinstance(info.run_config, dict)
