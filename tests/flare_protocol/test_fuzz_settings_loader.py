"""Fuzzing settings files: the settings a file sets read back as written, and any JSON
object instead gives settings that pass their own checks, or a KitError naming the file
and key; never another exception, never a number that is not finite (Python's JSON
reader takes NaN and Infinity, and NaN passes every bound check)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import KitError
from flare_protocol.settings_loader import check_settings, read_settings, setting_keys
from flare_server.settings import SECTION as SERVER_SECTION
from flare_server.settings import ServerSettings
from flare_site.settings import SECTION as SITE_SECTION
from flare_site.settings import SiteSettings
from tests.fuzzing import json_values, mutated_json, odd_values

SITE_DOC = {
    "heartbeat_interval_s": 2,
    "site": {"log_level": "debug", "max_outbox": 100, "python_env_pip_options": ["-q"]},
}
SERVER_DOC = {
    "max_entries": 50,
    "server": {"deploy_timeout_s": 60.5, "admin_port": 0, "workspace": "ws", "log_level": "info"},
}
CASES = {
    "site": (SiteSettings, SITE_SECTION, SITE_DOC),
    "server": (ServerSettings, SERVER_SECTION, SERVER_DOC),
}
_REQUIRED = {"site": {"server_address": "h:1", "workspace": Path("w")}, "server": {}}


def _build(which: str, values: dict[str, Any]) -> Any:
    cls = CASES[which][0]
    settings = cls(**{**_REQUIRED[which], **values})
    check_settings(settings, source="settings.json")
    return settings


def test_the_seed_documents_are_valid_settings() -> None:
    for which, (cls, section, doc) in CASES.items():
        read = read_settings(cls, doc, source="settings.json", section=section)
        assert not read.unknown and _build(which, read.values)


def _defaults(cls: type) -> dict[str, Any]:
    """Every setting with a default, as a settings file writes it."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in setting_keys(cls) and f.default is not dataclasses.MISSING:
            value = f.default
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


@given(st.sampled_from(sorted(CASES)), st.booleans())
def test_every_default_written_to_a_file_reads_back(which: str, in_section: bool) -> None:
    cls, section, _ = CASES[which]
    written = _defaults(cls)
    doc = json.loads(json.dumps({section: written} if in_section else written))
    values = read_settings(cls, doc, source="settings.json", section=section).values
    built = _build(which, values)
    for name in written:
        assert getattr(built, name) == getattr(cls(**_REQUIRED[which]), name), name


def _settings_or_refused(which: str, doc: Any) -> None:
    cls, section, _ = CASES[which]
    try:
        read = read_settings(cls, doc, source="settings.json", section=section)
        settings = _build(which, read.values)
    except KitError as exc:
        assert exc.message.startswith("settings.json")
        return
    for name, value in read.values.items():
        assert not (isinstance(value, float) and not math.isfinite(value)), name
        assert getattr(settings, name) == value


@given(
    st.sampled_from(sorted(CASES)).flatmap(
        lambda which: st.tuples(st.just(which), mutated_json(CASES[which][2], max_mutations=3))
    )
)
@example(("site", {"heartbeat_timeout": 10**400}))  # bug: OverflowError (int to float)
@example(("server", {"server": {"max_compression_ratio": 10**400}}))  # bug: OverflowError
@example(("site", {"heartbeat_timeout": math.nan}))  # bug: NaN passed every bound check
@example(("server", {"grace_period_s": math.inf}))  # bug: infinity (a sleep that never ends)
def test_a_bent_settings_file_is_settings_or_a_kit_error(case: tuple[str, Any]) -> None:
    which, doc = case
    if isinstance(doc, dict):
        _settings_or_refused(which, doc)


@given(
    st.sampled_from(sorted(CASES)),
    st.dictionaries(
        st.sampled_from(sorted(setting_keys(SiteSettings) | setting_keys(ServerSettings))),
        st.one_of(odd_values, json_values),
        max_size=6,
    ),
)
def test_any_value_for_any_setting_is_settings_or_a_kit_error(
    which: str, doc: dict[str, Any]
) -> None:
    _settings_or_refused(which, doc)
