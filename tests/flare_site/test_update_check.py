"""Checking an update file in place: the same verdicts as load_params, and its hash in one read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.errors import InvalidModel
from flare_protocol.models import save_params
from flare_site.blobs import sha256_file
from flare_site.update_check import verify_update

CAP = 1 << 30


def write_member(path: Path, name: str, array: np.ndarray, *, pickle: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as archive, archive.open(name, "w") as member:
        np.lib.format.write_array(member, array, allow_pickle=pickle)
    return path


def test_a_good_update_yields_its_sha256_and_size(tmp_path: Path) -> None:
    path = save_params(
        {
            "w": np.ones((4, 5), np.float32),
            "n": np.arange(7),
            "big": np.ones(3 << 20, np.float32),  # spans several read chunks
            "b": np.ones(3, ">f8"),
        },
        tmp_path / "u.npz",
    )
    assert verify_update(path, max_bytes=CAP) == sha256_file(path)


def test_nan_or_infinity_is_refused(tmp_path: Path) -> None:
    values = np.zeros(3 << 20, np.float32)
    values[-1] = np.inf  # in the last slice checked
    path = write_member(tmp_path / "u.npz", "w.npy", values)
    with pytest.raises(InvalidModel, match="'w' contains NaN or infinity"):
        verify_update(path, max_bytes=CAP)


def test_a_pickled_object_array_is_refused_unread(tmp_path: Path) -> None:
    path = write_member(tmp_path / "u.npz", "w.npy", np.array([1, None], object), pickle=True)
    with pytest.raises(InvalidModel, match="cannot be read without pickle"):
        verify_update(path, max_bytes=CAP)


def test_a_member_that_is_not_an_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("run.py", "print('hi')")
    with pytest.raises(InvalidModel, match="not a .npy array"):
        verify_update(path, max_bytes=CAP)


def test_a_header_that_disagrees_with_the_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    with zipfile.ZipFile(path, "w") as archive, archive.open("w.npy", "w") as member:
        np.lib.format.write_array(member, np.zeros(10, np.float32))
        member.write(b"extra")
    with pytest.raises(InvalidModel, match="is damaged"):
        verify_update(path, max_bytes=CAP)


def test_a_model_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = save_params({"w": np.zeros(1000)}, tmp_path / "u.npz")
    with pytest.raises(InvalidModel, match="more than the limit of 100"):
        verify_update(path, max_bytes=100)


def test_a_file_that_is_not_an_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(InvalidModel, match="not an .npz archive"):
        verify_update(path, max_bytes=CAP)


def test_a_compressed_update_is_checked_by_inflating_it(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    np.savez_compressed(path, w=np.array([1.0, np.nan]))
    with pytest.raises(InvalidModel, match="NaN or infinity"):
        verify_update(path, max_bytes=CAP)
    np.savez_compressed(path, w=np.ones(3))
    assert verify_update(path, max_bytes=CAP) == sha256_file(path)
