"""Fuzzing ``.npz`` models: every model survives being written and read back (plain,
compressed, pooled, as views), and any bytes a peer sends as a model are a model or an
InvalidModel, never another exception and never a pickle."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from flare_protocol.errors import InvalidModel
from flare_protocol.models import BufferPool, Params, dump_params, load_params, save_params
from flare_protocol.npz_layout import array_regions, view_params
from tests.fuzzing import fewer_examples
from tests.npz_fuzzing import hostile_npz, npy, npz, params, with_regressions

_POOL = BufferPool(max_bytes=64 * 1024**2)


def _same(a: Params, b: Params) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        for k in a
    )


@given(params, st.booleans())
def test_a_model_survives_dump_and_load(model: Params, compress: bool) -> None:
    data = dump_params(model, compress=compress)
    assert _same(load_params(data), model)
    assert _same(load_params(data, pool=_POOL), model)


@given(params)
def test_a_stored_model_is_viewed_as_it_was_written(model: Params) -> None:
    data = dump_params(model)
    views = view_params(memoryview(data), max_bytes=2**40, max_arrays=1000)
    assert views is not None and _same(views, model)


@given(params)
@fewer_examples(2)
def test_a_saved_model_loads_from_its_file(model: Params) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-model-") as folder:
        path = save_params(model, Path(folder) / "m.npz", durable=False)
        assert _same(load_params(path), model)
        assert _same(load_params(path, pool=_POOL), model)


def _load_or_refuse(data: bytes, *, pool: BufferPool | None = None) -> None:
    try:
        model = load_params(data, max_bytes=1024**2, max_arrays=20, pool=pool)
    except InvalidModel:
        return
    for name, array in model.items():
        assert array.dtype.kind in "biufc" and array.dtype.fields is None, name


@given(hostile_npz())
@with_regressions
def test_any_model_bytes_are_a_model_or_invalid_model(data: bytes) -> None:
    _load_or_refuse(data)


@given(hostile_npz())
@with_regressions
def test_any_model_bytes_read_into_a_pool_are_a_model_or_invalid_model(data: bytes) -> None:
    _load_or_refuse(data, pool=_POOL)


@given(hostile_npz())
@with_regressions
def test_any_model_bytes_have_regions_or_are_invalid_model(data: bytes) -> None:
    try:
        regions = array_regions(
            io.BytesIO(data), len(data), max_bytes=1024**2, max_arrays=20, where="test"
        )
        views = view_params(memoryview(data), max_bytes=1024**2, max_arrays=20)
    except InvalidModel:
        return
    if regions is not None:
        assert views is not None and sorted(views) == sorted(r.name for r in regions)
        for region in regions:
            assert 0 <= region.start and region.start + region.length <= len(data)


def test_a_pickled_array_is_refused_naming_pickle() -> None:
    import pickle

    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    data = npz([("w.npy", npy(header, pickle.dumps([1])))])
    try:
        load_params(data)
    except InvalidModel as exc:
        assert "pickle" in exc.message
    else:
        raise AssertionError("a pickled array was loaded")
