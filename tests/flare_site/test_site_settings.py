"""A site's settings from its kit's local/ folder: the loader and rules the server uses too."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import tests.kit_factory as kf
from flare_protocol.errors import KitError
from flare_protocol.kit import load_kit
from flare_site.settings import SiteSettings, load_site_settings


def _load(provisioned: Any, tmp_path: Path, doc: dict[str, Any], **flags: Any) -> SiteSettings:
    kit = kf.copy_kit(provisioned, "site-1", tmp_path)
    (kit / "local" / "settings.json").write_text(json.dumps(doc))
    return load_site_settings(load_kit(kit), **flags)


def test_the_provisioned_settings_load(provisioned: Any) -> None:
    settings = load_site_settings(load_kit(provisioned.kits["site-1"]))
    assert settings.heartbeat_interval == 5.0 and settings.connect_timeout == 10.0
    assert settings.server_address.endswith(":8102")


def test_durations_take_the_seconds_suffix_or_none_and_the_site_section_wins(
    provisioned: Any, tmp_path: Path
) -> None:
    doc = {
        "stop_grace": 4,
        "reconnect_max_s": 9,
        "log_level": "debug",
        "max_outbox": 50,
        "server_address": "top:1",
        "site": {"reconnect_max": 12, "server_address": "inner:2"},
    }
    settings = _load(provisioned, tmp_path, doc)
    assert (settings.stop_grace, settings.reconnect_max, settings.log_level) == (4.0, 12.0, "DEBUG")
    assert (settings.max_outbox, settings.server_address) == (50, "inner:2")
    flagged = _load(provisioned, tmp_path / "2", doc, server="flag:3", max_jobs=2)
    assert (flagged.server_address, flagged.max_jobs) == ("flag:3", 2)


def test_unknown_keys_are_named_in_a_warning_with_the_closest_setting(
    provisioned: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    doc = {"stop_grace_seconds": 3, "max_outbox_s": 5, "heartbeat_timeout": 9}
    with caplog.at_level(logging.WARNING, logger="flare_site"):
        settings = _load(provisioned, tmp_path, doc)
    assert settings.heartbeat_timeout == 9.0 and settings.max_outbox == 10_000
    (record,) = [r for r in caplog.records if "ignoring key(s)" in r.getMessage()]
    message = record.getMessage()
    assert "settings.json: ignoring key(s) that are not site settings:" in message
    assert "'max_outbox_s' (did you mean 'max_outbox'?)" in message
    assert "'stop_grace_seconds' (did you mean 'stop_grace_s'?)" in message


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"heartbeat_interval_s": "fast"}, "'heartbeat_interval_s' must be a number of seconds"),
        ({"reconnect_max": -1}, "'reconnect_max' must be positive, got -1"),
        ({"max_outbox": 2.5}, "'max_outbox' must be an integer, got 2.5"),
        ({"log_level": "LOUD"}, "'log_level' must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"server_address": 8102}, "'server_address' must be a string, got 8102"),
        ({"stop_grace": 1, "stop_grace_s": 2}, "give 'stop_grace' or 'stop_grace_s', not both"),
        ({"site": 3}, "'site' must be an object of site settings, got 3"),
    ],
)
def test_a_bad_value_is_refused_naming_the_file_the_key_and_the_type(
    provisioned: Any, tmp_path: Path, doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(KitError) as info:
        _load(provisioned, tmp_path, doc)
    assert str(info.value).startswith(str(tmp_path))
    assert f"/local/settings.json: {message}" in str(info.value)
