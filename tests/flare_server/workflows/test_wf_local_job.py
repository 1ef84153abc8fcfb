"""The pure controller driving real executors for two sites: the example jobs end to end,
without a network, checked against aggregates computed independently from what the sites sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from flare_protocol.app_config import parse_client_config, parse_server_config
from flare_protocol.models import load_params, save_params
from flare_server.workflows import (
    COMPLETED,
    JobFinished,
    ModelUpdate,
    RoundAggregated,
    RoundController,
    SendTasks,
)
from flare_site.executors import JobContext, TaskSpec, TrainOutcome, create_executor

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SITES = ["site-1", "site-2"]


async def _run_job(job: Path, tmp: Path):
    app = job / "app"
    server = parse_server_config((app / "config/config_fed_server.json").read_bytes())
    client = parse_client_config((app / "config/config_fed_client.json").read_bytes())
    initial = load_params(app / server.initial_model) if server.initial_model else None
    metrics: list[tuple[str, str]] = []
    hosts = {
        site: create_executor(
            client,
            JobContext("job-1", site, app, tmp / site),
            on_metric=lambda e, s=site: metrics.append((s, e.key)),
        )
        for site in SITES
    }
    await asyncio.gather(*(h.start() for h in hosts.values()))
    ctrl = RoundController(server, SITES)
    sent: dict[int, dict[str, tuple[dict, str, int]]] = {}
    globals_: dict[int, dict] = {0: initial or {}}
    actions = ctrl.start(initial)
    try:
        while actions:
            action, actions = actions[0], actions[1:]
            if isinstance(action, RoundAggregated):
                globals_[action.record.round] = action.record.global_model
            if not isinstance(action, SendTasks):
                continue
            path = save_params(action.model, tmp / f"global-{action.model_round}.npz")
            specs = [
                TaskSpec(t.task_id, t.kind, t.round, t.total_rounds, path) for t in action.tasks
            ]
            outcomes = await asyncio.gather(
                *(hosts[t.site].run_task(s) for t, s in zip(action.tasks, specs, strict=True))
            )
            for task, outcome in zip(action.tasks, outcomes, strict=True):
                if isinstance(outcome, TrainOutcome):
                    params = load_params(outcome.params_path)
                    ptype, n = outcome.params_type.value, outcome.num_examples
                    sent.setdefault(task.round, {})[task.site] = (params, ptype, n)
                    update = ModelUpdate(params, ptype, n, outcome.metrics)
                    actions += ctrl.on_result(task.site, task.task_id, update)
                else:
                    actions += ctrl.on_validation(task.site, task.task_id, outcome.metrics)
    finally:
        await asyncio.gather(*(h.stop(grace=5) for h in hosts.values()))
    return ctrl, sent, globals_, metrics


def _fedavg(global_model: dict, sent: dict) -> dict:
    total = sum(n for _, _, n in sent.values())
    out = {}
    for name in next(iter(sent.values()))[0]:
        acc = np.zeros(np.shape(next(iter(sent.values()))[0][name]))
        for params, ptype, n in sent.values():
            full = params[name] + (global_model[name] if ptype == "DIFF" else 0)
            acc = acc + n * np.asarray(full, dtype=np.float64)
        out[name] = acc / total
    return out


@pytest.mark.parametrize("job", ["hello-numpy", "hello-numpy-command"])
async def test_a_fedavg_example_runs_three_rounds_to_the_independent_aggregate(
    job: str, tmp_path: Path
) -> None:
    ctrl, sent, globals_, metrics = await _run_job(EXAMPLES / job, tmp_path)
    assert ctrl.status == COMPLETED
    assert sorted(sent) == [1, 2, 3] and all(sorted(s) == SITES for s in sent.values())
    for rnd in (1, 2, 3):
        expected = _fedavg(globals_[rnd - 1], sent[rnd])
        for name, value in expected.items():
            np.testing.assert_allclose(globals_[rnd][name], value, rtol=1e-12, atol=1e-12)
    final = ctrl.finished.final_model
    np.testing.assert_allclose(final["w"], globals_[3]["w"])
    assert [(v.round, v.site) for v in ctrl.validations] == [
        (r, s) for r in (1, 2, 3) for s in SITES
    ]
    mse = [
        np.mean([v.metrics["val_mse"] for v in ctrl.validations if v.round == r]) for r in (1, 2, 3)
    ]
    assert mse[0] > mse[1] > mse[2]  # it learns
    if job == "hello-numpy":
        assert {key for _, key in metrics} == {"train_loss"}


async def test_the_fedopt_example_with_diff_updates_matches_the_paper(tmp_path: Path) -> None:
    job = EXAMPLES / "hello-numpy-fedopt"
    ctrl, sent, globals_, _ = await _run_job(job, tmp_path)
    assert ctrl.status == COMPLETED
    assert {ptype for r in (2, 3) for _, ptype, _ in sent[r].values()} == {"DIFF"}
    opt = parse_server_config((job / "app/config/config_fed_server.json").read_bytes()).fedopt
    assert opt is not None
    # Round 1 has no global model: FedAvg of FULL weights; then Adam on the pseudo-gradient.
    x = _fedavg({}, sent[1])
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.full_like(val, opt.tau**2) for k, val in x.items()}
    for rnd in (2, 3):
        mean = _fedavg(x, sent[rnd])
        for k in x:
            delta = mean[k] - x[k]
            m[k] = opt.beta1 * m[k] + (1 - opt.beta1) * delta
            v[k] = opt.beta2 * v[k] + (1 - opt.beta2) * delta**2
            x[k] = x[k] + opt.learning_rate * m[k] / (np.sqrt(v[k]) + opt.tau)
        for k in x:
            np.testing.assert_allclose(globals_[rnd][k], x[k], rtol=1e-10, atol=1e-12)
    assert isinstance(ctrl.finished, JobFinished)
