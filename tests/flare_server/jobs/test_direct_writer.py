"""The upload spool writer (O_DIRECT when possible); fallbacks in tests/flare_protocol/."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from flare_protocol._direct_io import BLOCK, DirectWriter, replace_file
from flare_protocol.models import BufferPool, load_params, save_params

SIZES = [0, 1, 4095, 4096, 4097, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345]


@pytest.mark.parametrize("size", SIZES)
def test_direct_writer_keeps_every_byte_whatever_the_write_sizes(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "upload.zip"
    writer = DirectWriter(path, os.O_CREAT | os.O_EXCL)
    rng = random.Random(1)
    pos = 0
    while pos < size:
        step = rng.randint(1, 700_000)
        writer.write(data[pos : pos + step])
        pos += step
    writer.finish()
    assert writer.closed and writer.size == size
    assert path.read_bytes() == data


def test_direct_writer_creates_the_file_with_the_given_mode_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "upload.zip"
    DirectWriter(path, os.O_CREAT | os.O_EXCL, 0o600).finish()
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        DirectWriter(path, os.O_CREAT | os.O_EXCL)


def test_direct_writer_closed_after_a_failure_is_harmless(tmp_path: Path) -> None:
    writer = DirectWriter(tmp_path / "x", os.O_CREAT | os.O_EXCL)
    writer.write(b"abc")
    writer.close()
    writer.close()
    assert writer.closed


@pytest.mark.parametrize("size", [10, BLOCK + 7])
def test_replace_file_swaps_in_the_whole_file_private_to_the_owner(
    tmp_path: Path, size: int
) -> None:
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")
    replace_file(target, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    assert target.stat().st_size == size and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temp file left


def test_replace_file_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")

    class Exploding:
        def __len__(self) -> int:
            return 10

    with pytest.raises(TypeError):
        replace_file(target, Exploding())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_a_model_saved_through_a_pool_has_the_bytes_of_a_plain_save(tmp_path: Path) -> None:
    model = {"w": np.arange(BLOCK, dtype=np.float32), "b": np.ones(3)}
    plain = save_params(model, tmp_path / "plain.npz")
    pooled = save_params(model, tmp_path / "pooled.npz", pool=BufferPool(), durable=False)
    assert pooled.read_bytes() == plain.read_bytes()
    assert load_params(pooled)["w"].tolist() == model["w"].tolist()
