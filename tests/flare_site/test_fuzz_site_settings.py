"""Fuzzing a site's settings files as a site reads them at start-up (``local/settings.json``
and ``local/resources.json`` of a real kit): settings, or a KitError naming that file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import KitError
from flare_protocol.kit import load_kit
from flare_site.settings import load_site_settings
from provisioning import ProvisionResult
from tests.fuzzing import fewer_examples, hostile_json_texts, mutated_json
from tests.kit_factory import copy_kit

SETTINGS = {"heartbeat_interval_s": 2, "site": {"log_level": "debug", "max_outbox": 100}}
RESOURCES = {"max_concurrent_jobs": 2}


@pytest.fixture(scope="module")
def site_kit(provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of site-1's kit whose local/ files each example rewrites."""
    return copy_kit(provisioned, "site-1", tmp_path_factory.mktemp("site-settings"))


_texts = st.one_of(
    hostile_json_texts,
    mutated_json(SETTINGS, max_mutations=3).map(lambda d: json.dumps(d).encode()),
)


@given(st.sampled_from(["settings.json", "resources.json"]), _texts)
@fewer_examples(2)
# bug: a number of 5,000 digits was reported as "fed_client.json is malformed"
@example("settings.json", b'{"max_outbox": ' + b"9" * 5000 + b"}")
@example("settings.json", b"[" * 50_000)  # bug: RecursionError escaped load_kit
@example("resources.json", b"[" * 50_000)  # bug: RecursionError escaped
def test_any_local_file_gives_settings_or_a_kit_error(
    site_kit: Path, name: str, text: bytes
) -> None:
    local = site_kit / "local"
    (local / "settings.json").write_text(json.dumps(SETTINGS))
    (local / "resources.json").write_text(json.dumps(RESOURCES))
    (local / name).write_bytes(text)
    try:
        settings = load_site_settings(load_kit(site_kit), workspace=site_kit / "ws")
    except KitError as exc:
        assert str(exc.path).endswith(name), exc.message  # names the file that is wrong
    else:
        assert settings.max_jobs >= 1 and ":" in settings.server_address
