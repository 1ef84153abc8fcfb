"""Models as .npz: round trips, and everything unsafe refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.errors import InvalidModel
from flare_protocol.models import dump_params, load_params, save_params


def _npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_a_model_round_trips_with_dtypes_and_shapes(tmp_path: Path) -> None:
    params = {
        "conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "bn.num_batches_tracked": np.array(5, dtype=np.int64),
        "mask": np.array([True, False]),
        "h": np.ones(3, dtype=np.float16),
    }
    path = save_params(params, tmp_path / "m.npz")
    for loaded in (load_params(path), load_params(dump_params(params, compress=True))):
        assert loaded.keys() == params.keys()
        for name, array in params.items():
            assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
            np.testing.assert_array_equal(loaded[name], array)


def test_models_written_by_numpy_savez_load() -> None:
    loaded = load_params(_npz(w=np.eye(2)))
    np.testing.assert_array_equal(loaded["w"], np.eye(2))


def test_pickled_object_arrays_are_refused() -> None:
    data = _npz(w=np.array([{"__reduce__": "os.system"}], dtype=object))
    with pytest.raises(InvalidModel, match="cannot be read without pickle"):
        load_params(data)


def test_object_arrays_are_refused_when_saving(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="dtype object"):
        save_params({"w": np.array([1, "a"], dtype=object)}, tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("array", [np.array(["abc"]), np.zeros(2, dtype=[("a", "i4")])])
def test_string_and_structured_arrays_are_refused(array: np.ndarray) -> None:
    with pytest.raises(InvalidModel, match="only bool, integer, float and complex"):
        load_params(_npz(w=array))


def test_non_finite_values_are_refused_unless_allowed() -> None:
    data = _npz(w=np.array([1.0, np.nan]))
    with pytest.raises(InvalidModel, match="'w' contains NaN or infinity"):
        load_params(data)
    assert np.isnan(load_params(data, allow_nonfinite=True)["w"][1])


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 300, "a b"])
def test_bad_array_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="is not allowed"):
        save_params({name: np.zeros(1)}, tmp_path / "m.npz")


def test_a_member_that_is_not_npy_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.pkl", b"\x80\x04")
    with pytest.raises(InvalidModel, match="not a .npy array"):
        load_params(buffer.getvalue())


def test_an_archive_that_would_inflate_past_the_cap_is_refused_before_reading() -> None:
    data = dump_params({"w": np.zeros(1_000_000)}, compress=True)
    assert len(data) < 100_000
    with pytest.raises(InvalidModel, match="would inflate to"):
        load_params(data, max_bytes=1_000_000)


def test_too_many_arrays_are_refused() -> None:
    data = dump_params({f"a{i}": np.zeros(1) for i in range(20)})
    with pytest.raises(InvalidModel, match="holds 20 arrays"):
        load_params(data, max_arrays=10)


def test_garbage_is_not_an_npz(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="not an .npz archive"):
        load_params(b"definitely not a zip")


def test_non_arrays_are_refused_with_a_hint() -> None:
    with pytest.raises(InvalidModel, match="not a numpy array"):
        dump_params({"w": object()})


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "m.npz"
    save_params({"w": np.ones(2)}, target)
    save_params({"w": np.zeros(2)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    np.testing.assert_array_equal(load_params(target)["w"], np.zeros(2))
