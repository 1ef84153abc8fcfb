"""FedAvg and FedOpt against hand-written numpy (not the code under test)."""

from __future__ import annotations

import numpy as np
import pytest

from flare_protocol.app_config import FedOptConfig
from flare_protocol.errors import InvalidModel
from flare_server.workflows import ModelUpdate, ServerOptimizer, fedavg

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _same_numbers_in_any_order() -> None:
    """Each test draws the same numbers from RNG, whatever ran before it."""
    RNG.bit_generator.state = np.random.default_rng(7).bit_generator.state


def _model(dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {
        "w": RNG.normal(size=(4, 3)).astype(dtype),
        "b": RNG.normal(size=(3,)).astype(dtype),
    }


def test_fedavg_of_full_updates_is_the_num_examples_weighted_mean() -> None:
    g = _model()
    u1, u2, u3 = _model(), _model(), _model()
    out = fedavg(
        g,
        {
            "a": ModelUpdate(u1, "FULL", 10),
            "b": ModelUpdate(u2, "FULL", 30),
            "c": ModelUpdate(u3, "FULL", 60),
        },
    )
    for k in g:
        expected = (10 * u1[k].astype(np.float64) + 30 * u2[k] + 60 * u3[k]) / 100
        np.testing.assert_allclose(out[k], expected.astype(np.float32), rtol=1e-6, atol=1e-7)
        assert out[k].dtype == np.float32


def test_fedavg_adds_the_weighted_mean_diff_to_the_global_model() -> None:
    g = _model(np.float64)
    d1, d2 = _model(np.float64), _model(np.float64)
    out = fedavg(g, {"a": ModelUpdate(d1, "DIFF", 1), "b": ModelUpdate(d2, "DIFF", 3)})
    for k in g:
        np.testing.assert_allclose(out[k], g[k] + 0.25 * d1[k] + 0.75 * d2[k], rtol=1e-12)


def test_fedavg_mixes_full_and_diff_senders() -> None:
    g = _model(np.float64)
    full, diff = _model(np.float64), _model(np.float64)
    out = fedavg(g, {"a": ModelUpdate(full, "FULL", 2), "b": ModelUpdate(diff, "DIFF", 2)})
    for k in g:
        np.testing.assert_allclose(out[k], (full[k] + g[k] + diff[k]) / 2, rtol=1e-12)


def test_fedavg_keeps_integer_dtypes_by_rounding() -> None:
    g = {"steps": np.array([10, 20], dtype=np.int64)}
    out = fedavg(
        g,
        {
            "a": ModelUpdate({"steps": np.array([11, 21], dtype=np.int64)}, "FULL", 1),
            "b": ModelUpdate({"steps": np.array([14, 24], dtype=np.int64)}, "FULL", 1),
        },
    )
    assert out["steps"].dtype == np.int64
    assert out["steps"].tolist() == [12, 22]  # 12.5 and 22.5 round half to even


def test_fedavg_accumulates_float16_in_float64() -> None:
    g = {"w": np.zeros(1000, dtype=np.float16)}
    updates = {
        f"s{i}": ModelUpdate({"w": np.full(1000, 1000 + i, dtype=np.float16)}, "FULL", 1)
        for i in range(8)
    }
    out = fedavg(g, updates)
    assert out["w"].dtype == np.float16
    expected = np.float16(np.mean([np.float64(np.float16(1000 + i)) for i in range(8)]))
    assert (out["w"] == expected).all()


def test_fedavg_without_global_model_takes_full_updates() -> None:
    u1, u2 = _model(), _model()
    out = fedavg({}, {"a": ModelUpdate(u1, "FULL", 1), "b": ModelUpdate(u2, "FULL", 1)})
    np.testing.assert_allclose(out["w"], (u1["w"].astype(np.float64) + u2["w"]) / 2, atol=1e-6)


def test_diff_without_global_model_is_refused() -> None:
    with pytest.raises(InvalidModel, match="DIFF update but there is no global model"):
        fedavg({}, {"a": ModelUpdate(_model(), "DIFF", 1)})


def test_update_with_a_wrong_shape_is_refused_naming_site_and_array() -> None:
    g = _model()
    bad = dict(g, b=np.zeros(5, dtype=np.float32))
    with pytest.raises(InvalidModel, match=r"site-2 sent array 'b' with shape \(5,\)"):
        fedavg(g, {"site-1": ModelUpdate(g, "FULL", 1), "site-2": ModelUpdate(bad, "FULL", 1)})


def test_update_with_missing_arrays_is_refused() -> None:
    g = _model()
    with pytest.raises(InvalidModel, match=r"missing arrays \['b'\]"):
        fedavg(g, {"site-1": ModelUpdate({"w": g["w"]}, "FULL", 1)})


def test_zero_total_examples_is_refused() -> None:
    g = _model()
    with pytest.raises(InvalidModel, match="add up to 0"):
        fedavg(g, {"a": ModelUpdate(g, "FULL", 0)})


# -- FedOpt ------------------------------------------------------------------------------


def _reference_fedopt(opt: str, x, rounds, lr, b1, b2, tau):
    """Reddi et al. Algorithm 2, written out for one array, float64."""
    x = x.astype(np.float64)
    m = np.zeros_like(x)
    v = np.full_like(x, tau * tau)
    for sites in rounds:
        n = sum(w for _, w in sites)
        mean = sum(p.astype(np.float64) * w for p, w in sites) / n
        delta = mean - x
        m = b1 * m + (1 - b1) * delta
        if opt == "adam":
            v = b2 * v + (1 - b2) * delta**2
        elif opt == "yogi":
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        else:
            v = v + delta**2
        x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("opt", ["adam", "yogi", "adagrad"])
def test_fedopt_matches_the_paper_over_three_rounds(opt: str) -> None:
    cfg = FedOptConfig(serveropt=opt, learning_rate=0.05, beta1=0.8, beta2=0.95, tau=1e-3)
    server = ServerOptimizer(cfg)
    g = {"w": RNG.normal(size=(5, 2))}
    x0 = g["w"].copy()
    rounds = []
    for _ in range(3):
        a, b = RNG.normal(size=(5, 2)), RNG.normal(size=(5, 2))
        rounds.append([(a, 3), (b, 1)])
        g = server.aggregate(
            g, {"s1": ModelUpdate({"w": a}, "FULL", 3), "s2": ModelUpdate({"w": b}, "FULL", 1)}
        )
    expected = _reference_fedopt(opt, x0, rounds, 0.05, 0.8, 0.95, 1e-3)
    np.testing.assert_allclose(g["w"], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("opt", ["adam", "yogi", "adagrad"])
def test_fedopt_over_arrays_longer_than_one_slice_matches_the_paper(opt: str) -> None:
    """The optimiser works slice by slice; every slice boundary must be seamless."""
    size = (1 << 20) + 1234  # two slices, the second partial
    cfg = FedOptConfig(serveropt=opt, learning_rate=0.05, beta1=0.8, beta2=0.95, tau=1e-3)
    server = ServerOptimizer(cfg)
    g = {"w": RNG.normal(size=size).astype(np.float32)}
    x0 = g["w"].copy()
    rounds = []
    for _ in range(2):
        a, b = RNG.normal(size=size), RNG.normal(size=size)
        rounds.append([(a.astype(np.float32), 3), (b.astype(np.float32), 1)])
        g = server.aggregate(
            g,
            {
                "s1": ModelUpdate({"w": rounds[-1][0][0]}, "FULL", 3),
                "s2": ModelUpdate({"w": rounds[-1][1][0]}, "FULL", 1),
            },
        )
        assert g["w"].dtype == np.float32
    expected = _reference_fedopt(opt, x0, rounds, 0.05, 0.8, 0.95, 1e-3)
    np.testing.assert_allclose(g["w"], expected, rtol=1e-5, atol=1e-6)


def test_fedopt_and_fedavg_write_the_new_model_into_arrays_allocate_makes() -> None:
    made: list[np.ndarray] = []

    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        made.append(np.full(shape, -7, dtype=dtype))  # stale contents must be overwritten
        return made[-1]

    g = {"w": np.ones(4), "n": np.arange(3)}
    update = {"s": ModelUpdate({"w": np.full(4, 3.0), "n": np.arange(3) + 2}, "FULL", 1)}
    avg = fedavg(g, update, allocate=allocate)
    assert all(any(a is m for m in made) for a in avg.values())
    assert avg["w"].tolist() == [3.0] * 4 and avg["n"].tolist() == [2, 3, 4]
    made.clear()
    opt = ServerOptimizer(FedOptConfig()).aggregate(g, update, allocate=allocate)
    assert all(any(a is m for m in made) for a in opt.values())
    assert opt["n"].tolist() == [2, 3, 4] and (opt["w"] > 1.0).all()


def test_fedopt_with_diff_updates_uses_global_plus_diff() -> None:
    cfg = FedOptConfig(serveropt="adam", learning_rate=0.1)
    g = {"w": RNG.normal(size=4).astype(np.float32)}
    d = RNG.normal(size=4).astype(np.float32)
    out = ServerOptimizer(cfg).aggregate(g, {"s": ModelUpdate({"w": d}, "DIFF", 5)})
    full = g["w"].astype(np.float64) + d
    expected = _reference_fedopt("adam", g["w"], [[(full, 5)]], 0.1, 0.9, 0.99, 1e-4)
    assert out["w"].dtype == np.float32
    np.testing.assert_allclose(out["w"], expected, atol=1e-6)


def test_fedopt_averages_integer_arrays_instead_of_optimising_them() -> None:
    g = {"w": np.zeros(2), "n": np.array([4], dtype=np.int32)}
    out = ServerOptimizer(FedOptConfig()).aggregate(
        g,
        {
            "a": ModelUpdate({"w": np.ones(2), "n": np.array([6], dtype=np.int32)}, "FULL", 1),
            "b": ModelUpdate({"w": np.ones(2), "n": np.array([8], dtype=np.int32)}, "FULL", 1),
        },
    )
    assert out["n"].tolist() == [7] and out["n"].dtype == np.int32


def test_fedopt_first_round_without_global_model_is_fedavg() -> None:
    a, b = RNG.normal(size=3), RNG.normal(size=3)
    out = ServerOptimizer(FedOptConfig()).aggregate(
        {}, {"a": ModelUpdate({"w": a}, "FULL", 1), "b": ModelUpdate({"w": b}, "FULL", 1)}
    )
    np.testing.assert_allclose(out["w"], (a + b) / 2)


def test_an_update_is_built_from_a_site_result_body() -> None:
    body = {"params_type": "DIFF", "num_examples": 12, "metrics": {"loss": 0.5}}
    update = ModelUpdate.from_result(body, {"w": np.ones(2)}, "site-1")
    assert (update.params_type.value, update.num_examples, dict(update.metrics)) == (
        "DIFF",
        12,
        {"loss": 0.5},
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"num_examples": "12"}, "num_examples must be an integer"),
        ({"num_examples": True}, "num_examples must be an integer"),
        ({"num_examples": -1}, "num_examples must be an integer"),
        ({"num_examples": 1, "params_type": "DELTA"}, "params_type must be FULL or DIFF"),
        ({"num_examples": 1, "metrics": {"a": "x"}}, "metric 'a' must be a number"),
        ({"num_examples": 1, "metrics": [1]}, "metrics must be an object"),
    ],
)
def test_a_malformed_result_body_names_site_and_field(body: dict, message: str) -> None:
    with pytest.raises(InvalidModel, match=f"site-2: {message}"):
        ModelUpdate.from_result(body, {"w": np.ones(2)}, "site-2")
