"""Server settings from the kit's local/settings.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.kit_factory as kf
from flare_protocol.errors import KitError
from flare_server.app import load_server_kit, server_options
from flare_server.settings import ServerSettings


def _kit_with(provisioned, tmp_path, settings) -> Path:
    kit = kf.copy_kit(provisioned, "localhost", tmp_path)
    (kit / "local" / "settings.json").write_text(json.dumps(settings))
    return kit


def test_provisioned_settings_are_understood(provisioned):
    settings = ServerSettings.from_kit(load_server_kit(provisioned.kits["localhost"]))
    assert settings.log_level == "INFO" and settings.heartbeat_timeout == 30.0


def test_seconds_may_be_spelled_with_an_s_suffix_and_nested_server_wins(provisioned, tmp_path):
    kit = _kit_with(
        provisioned,
        tmp_path,
        {
            "heartbeat_timeout_s": 12,
            "max_entries": 50,
            "server": {"max_entries": 70},
            "server_address": "x:1",
        },
    )
    settings = ServerSettings.from_kit(load_server_kit(kit), host="127.0.0.1")
    assert (settings.heartbeat_timeout, settings.max_entries, settings.host) == (
        12.0,
        70,
        "127.0.0.1",
    )
    assert settings.extra == {"server_address": "x:1"}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"heartbeat_timeout": "soon"}, "'heartbeat_timeout' must be a number"),
        ({"max_entries": 1.5}, "'max_entries' must be an integer"),
        ({"max_entries": 0}, "'max_entries' must be positive"),
        ({"admin_port": 70000}, "'admin_port' must be in 0..65535"),
        ({"log_level": 3}, "'log_level' must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"grace_period_s": "soon"}, "'grace_period_s' must be a number of seconds"),
        ({"max_entries": True}, "'max_entries' must be an integer"),
        ({"server": "x"}, "'server' must be an object of server settings"),
        ({"log_wait": 1, "log_wait_s": 2}, "give 'log_wait' or 'log_wait_s', not both"),
        ({"log_level": "LOUD"}, "'log_level'"),
        ({"workspace": 3}, "'workspace' must be a path"),
        ({"max_compression_ratio": 0}, "'max_compression_ratio' must be positive"),
        ({"max_compression_ratio": "high"}, "'max_compression_ratio' must be a number, got"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_key(provisioned, tmp_path, doc, needle):
    kit = _kit_with(provisioned, tmp_path, doc)
    with pytest.raises(KitError, match=needle) as info:
        ServerSettings.from_kit(load_server_kit(kit))
    assert "settings.json" in str(info.value)


def test_the_compression_ratio_cap_is_a_setting_that_reaches_the_job_store(provisioned, tmp_path):
    from tests.server_harness import ServerThread

    assert ServerSettings().max_compression_ratio == 200.0
    kit = _kit_with(provisioned, tmp_path / "kit", {"max_compression_ratio": 50})
    with ServerThread(kit, tmp_path / "ws") as server:
        assert server.server.store.limits.max_ratio == 50.0


def test_only_durations_take_the_seconds_suffix(provisioned, tmp_path):
    doc = {"max_entries_s": 50, "max_compression_ratio_s": 10, "log_wait_s": 7}
    settings = ServerSettings.from_kit(load_server_kit(_kit_with(provisioned, tmp_path, doc)))
    assert (settings.max_entries, settings.log_wait) == (10_000, 7.0)
    assert settings.unknown_keys() == [
        "'max_compression_ratio_s' (did you mean 'max_compression_ratio'?)",
        "'max_entries_s' (did you mean 'max_entries'?)",
    ]


def test_unknown_keys_are_named_with_the_closest_setting(provisioned, tmp_path):
    doc = {"heartbeat_timout_s": 3, "server": {"max_compresion_ratio": 10}, "colour": "blue"}
    settings = ServerSettings.from_kit(load_server_kit(_kit_with(provisioned, tmp_path, doc)))
    assert settings.unknown_keys() == [
        "'colour'",
        "'heartbeat_timout_s' (did you mean 'heartbeat_timeout_s'?)",
        "'max_compresion_ratio' (did you mean 'max_compression_ratio'?)",
    ]


def test_the_server_warns_about_unknown_keys_in_its_log(provisioned, tmp_path):
    from tests.server_harness import ServerThread

    kit = _kit_with(provisioned, tmp_path / "kit", {"log_levl": "DEBUG"})
    with ServerThread(kit, tmp_path / "ws") as server:
        log = (server.server.workspace / "logs" / "server.log").read_text()
    assert "ignoring key(s) that are not server settings: 'log_levl' (did you mean" in log
    assert "'log_level'?)" in log


def test_bounds_become_grpc_channel_arguments():
    options = dict(
        server_options(ServerSettings(handshake_timeout_ms=1234, max_metadata_bytes=999))
    )
    assert options["grpc.server_handshake_timeout_ms"] == 1234
    assert options["grpc.max_metadata_size"] == 999
    assert options["grpc.max_receive_message_length"] == 4 * 1024 * 1024
    assert options["grpc.so_reuseport"] == 0
