"""The server's model memory: pooled buffers give the same models, bytes and refusals."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pytest

from flare_protocol.errors import InvalidModel
from flare_protocol.models import (
    BufferPool,
    ParamsType,
    dump_params,
    dump_params_into,
    load_params,
)
from flare_protocol.npz_layout import view_params
from flare_server.workflows import ModelUpdate, aggregation, fedavg, weighted_mean
from flare_server.workflows.aggregation import cast_like

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def _same_numbers_in_any_order() -> None:
    """Each test draws the same numbers from RNG, whatever ran before it."""
    RNG.bit_generator.state = np.random.default_rng(11).bit_generator.state


def _varied_model() -> dict[str, np.ndarray]:
    return {
        "w": RNG.normal(size=(30, 7)).astype(np.float32),
        "steps": np.arange(5, dtype=np.int64),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), np.float16),
        "fortran": np.asfortranarray(RNG.normal(size=(6, 4))),
        "complex": (RNG.normal(size=7) + 1j).astype(np.complex64),
        "mask": np.array([True, False]),
        "big_endian": np.arange(4, dtype=">f4"),
        "strided": RNG.normal(size=(10, 10))[::2],
    }


def _npz_with(name: str, array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open(f"{name}.npy", "w") as member:
            np.lib.format.write_array(member, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _refusal(data: bytes, pool: BufferPool | None) -> str:
    with pytest.raises(InvalidModel) as caught:
        load_params(data, pool=pool)
    return str(caught.value)


def test_a_pool_never_hands_out_a_buffer_something_still_refers_to() -> None:
    pool = BufferPool()
    first = pool.take(1000)
    assert pool.take(1000).base is not first.base
    array = first[:800].view(np.float64).reshape(10, 10)
    owner = id(first.base)  # the id only: a reference would keep the buffer taken
    del first
    assert id(pool.take(1000).base) != owner  # the float64 view still holds it
    view = array.data
    del array
    assert id(pool.take(1000).base) != owner  # so does a memoryview
    del view
    assert id(pool.take(1000).base) == owner


def test_a_pool_keeps_no_more_than_its_cap() -> None:
    pool = BufferPool(max_bytes=3 * BufferPool.GRANULE)
    held = [pool.take(BufferPool.GRANULE) for _ in range(5)]
    assert len(held) == 5
    assert sum(b.nbytes for b in pool._buffers) <= pool.max_bytes


def test_a_model_serialized_into_a_pool_has_the_bytes_of_dump_params() -> None:
    pool = BufferPool()
    for model in (_varied_model(), {}, {"big": RNG.normal(size=300_000).astype(np.float32)}):
        assert bytes(dump_params_into(model, pool)) == dump_params(model)


def test_a_model_loaded_into_a_pool_equals_the_plain_load() -> None:
    pool = BufferPool()
    data = dump_params(_varied_model())
    plain, pooled = load_params(data), load_params(data, pool=pool)
    assert list(pooled) == list(plain)
    for name, array in plain.items():
        assert pooled[name].dtype == array.dtype
        assert pooled[name].shape == array.shape
        assert pooled[name].tobytes() == array.tobytes()
        assert pooled[name].flags.f_contiguous == array.flags.f_contiguous


def test_loads_reuse_a_buffer_once_the_earlier_update_is_gone() -> None:
    pool = BufferPool()
    data = dump_params({"w": RNG.normal(size=100_000)})
    first = load_params(data, pool=pool)
    second = load_params(data, pool=pool)
    assert np.shares_memory(first["w"], second["w"]) is False
    del first
    third = load_params(data, pool=pool)
    assert pool.reused == 1
    assert third["w"].tobytes() == second["w"].tobytes()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_npz_with("o", np.array(["a"], dtype=object), allow_pickle=True), id="pickle"),
        pytest.param(_npz_with("s", np.array(["abc"])), id="string"),
        pytest.param(_npz_with("n", np.array([1.0, np.nan])), id="nan"),
        pytest.param(b"not a zip", id="not-zip"),
    ],
)
def test_a_pooled_load_refuses_what_the_plain_load_refuses_with_the_same_words(
    data: bytes,
) -> None:
    assert _refusal(data, BufferPool()) == _refusal(data, None)


def test_a_pooled_load_checks_the_crc_and_a_truncated_array() -> None:
    good = dump_params({"w": np.arange(1000, dtype=np.float32)})
    damaged = bytearray(good)
    damaged[good.index(np.float32(500).tobytes())] ^= 0x40
    assert "Bad CRC-32" in _refusal(bytes(damaged), BufferPool())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, archive.open("t.npy", "w") as member:
        header = {"shape": (100,), "fortran_order": False, "descr": "<f4"}
        np.lib.format.write_array_header_1_0(member, header)
        member.write(b"\0" * 40)
    truncated = buffer.getvalue()
    assert _refusal(truncated, BufferPool()) == _refusal(truncated, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64, bool])
@pytest.mark.parametrize("types", [("FULL", "FULL"), ("DIFF", "FULL", "DIFF")])
def test_fedavg_is_bit_identical_to_the_float64_mean_cast_back(
    monkeypatch: pytest.MonkeyPatch, dtype: type, types: tuple[str, ...]
) -> None:
    monkeypatch.setattr(aggregation, "_SLICE", 7)  # several slices, a partial last one

    def model() -> dict[str, np.ndarray]:
        return {"w": (RNG.normal(size=(5, 9)) * 50).astype(dtype)}

    g = model()
    updates = {
        f"s{i}": ModelUpdate(model(), ParamsType(t), int(RNG.integers(1, 50)))
        for i, t in enumerate(types)
    }
    full = [
        u.params["w"].astype(np.float64) + (g["w"] if u.params_type.value == "DIFF" else 0)
        for u in updates.values()
    ]
    expected = cast_like(
        weighted_mean(full, [float(u.num_examples) for u in updates.values()]), g["w"].dtype
    )
    out = fedavg(g, updates)["w"]
    assert out.dtype == expected.dtype
    assert out.tobytes() == expected.tobytes()


# -- models received into memory: arrays that are views of the received bytes ---------------


def test_a_model_in_memory_is_viewed_in_place_with_the_plain_load_arrays() -> None:
    data = bytearray(dump_params(_varied_model()))
    views = view_params(memoryview(data), max_bytes=1 << 30, max_arrays=100)
    assert views is not None
    plain = load_params(bytes(data))
    assert sorted(views) == sorted(plain)
    for name, array in plain.items():
        assert views[name].dtype == array.dtype and views[name].shape == array.shape
        assert views[name].tobytes() == array.tobytes()
    carrier = np.frombuffer(data, dtype=np.uint8)
    assert np.shares_memory(views["w"], carrier)  # no copy was made


@pytest.mark.parametrize(
    ("data", "words"),
    [
        pytest.param(
            _npz_with("o", np.array(["a"], dtype=object), allow_pickle=True),
            "cannot be read without pickle",
            id="pickle",
        ),
        pytest.param(_npz_with("s", np.array(["abc"])), "only bool, integer", id="string"),
        pytest.param(b"not a zip", "not an .npz archive", id="not-zip"),
        pytest.param(_npz_with("bad/name", np.zeros(2)), "not allowed", id="name"),
    ],
)
def test_a_model_in_memory_is_refused_for_what_the_plain_load_refuses(
    data: bytes, words: str
) -> None:
    assert words in _refusal(data, None)
    with pytest.raises(InvalidModel, match=re.escape(words)):
        view_params(memoryview(data), max_bytes=1 << 30, max_arrays=100)


def test_a_model_in_memory_over_a_cap_or_damaged_is_refused_before_any_array_is_made() -> None:
    data = dump_params({"w": np.zeros(1000), "v": np.zeros(3)})
    with pytest.raises(InvalidModel, match="more than the limit of 100"):
        view_params(memoryview(data), max_bytes=100, max_arrays=100)
    with pytest.raises(InvalidModel, match="2 arrays, more than the limit of 1"):
        view_params(memoryview(data), max_bytes=1 << 30, max_arrays=1)
    with pytest.raises(InvalidModel):
        view_params(memoryview(data[: len(data) // 2]), max_bytes=1 << 30, max_arrays=100)


def test_a_compressed_model_in_memory_is_left_to_the_plain_load() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, w=np.ones(3))
    assert view_params(buffer.getbuffer(), max_bytes=1 << 30, max_arrays=100) is None


def test_pool_arrays_are_pooled_only_when_big_enough_to_be_worth_a_buffer() -> None:
    pool = BufferPool()
    small = pool.array((10, 10), np.dtype(np.float32))
    assert pool.allocated == 0 and small.shape == (10, 10)
    big = pool.array((BufferPool.GRANULE // 8, 2), np.dtype(np.float64))
    assert pool.allocated == 1 and big.dtype == np.float64 and big.flags.c_contiguous
    del big
    again = pool.array((BufferPool.GRANULE // 4,), np.dtype(np.float32))
    assert pool.reused == 1 and again.size == BufferPool.GRANULE // 4


def test_trim_gives_back_idle_buffers_and_keeps_the_ones_in_use() -> None:
    pool = BufferPool()
    kept = pool.take(3 * BufferPool.GRANULE)
    pool.take(2 * BufferPool.GRANULE)  # dropped at once: idle
    assert pool.held_bytes == 5 * BufferPool.GRANULE
    assert pool.trim() == 2 * BufferPool.GRANULE
    assert pool.held_bytes == 3 * BufferPool.GRANULE and kept.size == 3 * BufferPool.GRANULE
