"""Fuzzing the server's settings file as the server reads it at start-up (``local/
settings.json`` of a real server kit): settings, or a KitError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flare_protocol.errors import KitError
from flare_protocol.kit import load_kit
from flare_server.settings import ServerSettings
from provisioning import ProvisionResult
from tests.fuzzing import fewer_examples, hostile_json_texts, mutated_json
from tests.kit_factory import copy_kit

SETTINGS = {"max_entries": 50, "server": {"deploy_timeout_s": 60.5, "log_level": "info"}}


@pytest.fixture(scope="module")
def server_kit(provisioned: ProvisionResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the server's kit whose local/settings.json each example rewrites."""
    return copy_kit(provisioned, "localhost", tmp_path_factory.mktemp("server-settings"))


@given(
    st.one_of(
        hostile_json_texts,
        mutated_json(SETTINGS, max_mutations=3).map(lambda d: json.dumps(d).encode()),
    )
)
@fewer_examples(2)
@example(b'{"max_entries": ' + b"9" * 5000 + b"}")  # bug: reported as fed_server.json
@example(b"[" * 50_000)  # bug: RecursionError escaped load_kit
def test_any_settings_file_gives_server_settings_or_a_kit_error(
    server_kit: Path, text: bytes
) -> None:
    (server_kit / "local" / "settings.json").write_bytes(text)
    try:
        settings = ServerSettings.from_kit(load_kit(server_kit))
    except KitError as exc:
        assert str(exc.path).endswith("settings.json"), exc.message  # names the file
    else:
        assert settings.max_entries >= 1
