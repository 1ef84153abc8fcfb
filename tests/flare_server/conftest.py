"""Fixtures for server tests: a running server with the session's provisioned project."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_harness import ServerThread


@pytest.fixture
def server_kit(provisioned: Any) -> Path:
    return Path(provisioned.kits["localhost"])


@pytest.fixture
def server(server_kit: Path, tmp_path: Path) -> Iterator[ServerThread]:
    """A fresh server (own workspace) on 127.0.0.1, ports 0."""
    with ServerThread(
        server_kit,
        tmp_path / "ws",
        heartbeat_interval=0.2,
        heartbeat_timeout=1.0,
        site_command_timeout=0.5,
    ) as srv:
        yield srv


@pytest.fixture
def kits(provisioned: Any) -> dict[str, Path]:
    return {name: Path(path) for name, path in provisioned.kits.items()}


SERVER_CONFIG = {"workflow": "fedavg", "num_rounds": 1}
CLIENT_CONFIG = {"executor": "script", "script": "custom/train.py"}


def job_files(meta: dict[str, Any] | None = None, **meta_fields: Any) -> dict[str, bytes]:
    """A minimal valid job (one app deployed to @ALL): relative path -> bytes."""
    meta = (
        meta
        if meta is not None
        else {"name": "hello", "min_clients": 1, "deploy_map": {"app": ["@ALL"]}, **meta_fields}
    )
    return {
        "meta.json": json.dumps(meta).encode(),
        "app/config/config_fed_server.json": json.dumps(SERVER_CONFIG).encode(),
        "app/config/config_fed_client.json": json.dumps(CLIENT_CONFIG).encode(),
        "app/custom/train.py": b"print('training')\n",
    }


def job_zip(
    meta: dict[str, Any] | None = None,
    *,
    files: dict[str, bytes] | None = None,
    top: str | None = "hello",
    **meta_fields: Any,
) -> bytes:
    """A job archive (in memory) holding ``files`` (default: :func:`job_files`) under ``top/``."""
    files = files if files is not None else job_files(meta, **meta_fields)
    prefix = f"{top}/" if top else ""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, data in files.items():
            zf.writestr(f"{prefix}{entry}", data)
    return buf.getvalue()
