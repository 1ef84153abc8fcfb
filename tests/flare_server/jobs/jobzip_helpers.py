"""Helpers for the job-store tests: valid job files and zips built with zipfile."""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

SERVER_CONFIG = {"workflow": "fedavg", "num_rounds": 1}
CLIENT_CONFIG = {"executor": "script", "script": "custom/train.py"}


def valid_job_files(meta: Mapping[str, object] | None = None) -> dict[str, bytes]:
    """A minimal valid job (one app deployed to @ALL), relative paths -> bytes."""
    meta = {
        "name": "hello-numpy",
        "deploy_map": {"app": ["@ALL"]},
        "min_clients": 1,
        **(meta or {}),
    }
    return {
        "meta.json": json.dumps(meta).encode(),
        "app/config/config_fed_server.json": json.dumps(SERVER_CONFIG).encode(),
        "app/config/config_fed_client.json": json.dumps(CLIENT_CONFIG).encode(),
        "app/custom/train.py": b"print('training')\n",
    }


def write_zip(path: Path, files: Mapping[str, bytes], *, top: str | None = "hello-numpy") -> Path:
    """Write ``files`` into a zip, under ``top/`` unless top is None."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    return path


def patch_declared_size(path: Path, name: str, size: int) -> None:
    """Make entry ``name`` declare ``size`` uncompressed bytes (local and central headers)."""
    _patch_headers(path, name, central_at=24, local_at=22, fmt="<I", value=size)


def set_encrypted_flag(path: Path, name: str) -> None:
    """Set the 'encrypted' general-purpose flag of entry ``name`` (zipfile clears it on write)."""
    _patch_headers(path, name, central_at=8, local_at=6, fmt="<H", value=0x1)


def _patch_headers(
    path: Path, name: str, *, central_at: int, local_at: int, fmt: str, value: int
) -> None:
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    pos = cd_offset
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        local = struct.unpack_from("<I", data, pos + 42)[0]
        entry = bytes(data[pos + 46 : pos + 46 + name_len]).decode()
        if entry == name:
            struct.pack_into(fmt, data, pos + central_at, value)
            struct.pack_into(fmt, data, local + local_at, value)
        pos += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(data))
