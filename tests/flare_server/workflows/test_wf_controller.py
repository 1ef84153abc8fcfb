"""The round controller as a pure state machine: events in, actions out, no I/O."""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import pytest

from flare_protocol.app_config import FedOptConfig, ServerConfig
from flare_server.workflows import (
    ABNORMAL,
    ABORTED,
    COMPLETED,
    EXECUTION_EXCEPTION,
    JobFinished,
    ModelUpdate,
    ResumePoint,
    RoundAggregated,
    RoundController,
    SendTasks,
    StartTimer,
    ValidationRecorded,
)

SITES = ["site-1", "site-2", "site-3"]


def _cfg(**kw) -> ServerConfig:
    base = dict(workflow="fedavg", num_rounds=2, round_timeout=5.0)
    base.update(kw)
    return ServerConfig(**base)


def _send(actions) -> SendTasks:
    sends = [a for a in actions if isinstance(a, SendTasks)]
    assert len(sends) == 1, actions
    return sends[0]


def _finished(actions) -> JobFinished:
    assert isinstance(actions[-1], JobFinished), actions
    return actions[-1]


def _full(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value)}


def _answer(ctrl: RoundController, send: SendTasks, values: dict[str, tuple[float, int]]):
    actions = []
    for task in send.tasks:
        if task.site in values:
            v, n = values[task.site]
            actions += ctrl.on_result(task.site, task.task_id, ModelUpdate(_full(v), "FULL", n))
    return actions


def test_start_sends_round_one_to_every_site_with_a_timer() -> None:
    ctrl = RoundController(_cfg(), SITES)
    actions = ctrl.start(_full(0.0))
    send = _send(actions)
    assert [t.site for t in send.tasks] == SITES
    assert {(t.kind, t.round, t.total_rounds) for t in send.tasks} == {("train", 1, 2)}
    assert send.model_round == 0
    assert StartTimer("train-1", 5.0) in actions


def test_a_full_job_completes_with_the_fedavg_of_every_round() -> None:
    ctrl = RoundController(_cfg(), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    actions = _answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (4.0, 3)})
    record = next(a for a in actions if isinstance(a, RoundAggregated)).record
    np.testing.assert_allclose(record.global_model["w"], (1.0 * 1 + 4.0 * 3) / 4)
    assert record.contributors == {"site-1": 1, "site-2": 3}
    send = _send(actions)
    assert send.model_round == 1 and send.tasks[0].round == 2
    np.testing.assert_allclose(send.model["w"], 3.25)
    actions = _answer(ctrl, send, {"site-1": (2.0, 1), "site-2": (2.0, 1)})
    done = _finished(actions)
    assert done.status == COMPLETED
    np.testing.assert_allclose(done.final_model["w"], 2.0)
    assert [r.round for r in ctrl.history] == [1, 2]
    assert ctrl.done and ctrl.status == COMPLETED


def test_the_round_history_keeps_no_model_so_its_memory_can_be_reused() -> None:
    made: list[np.ndarray] = []

    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        made.append(np.empty(shape, dtype=dtype))
        return made[-1]

    ctrl = RoundController(_cfg(), SITES[:2], allocate=allocate)
    send = _send(ctrl.start(_full(0.0)))
    actions = _answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (3.0, 1)})
    record = next(a for a in actions if isinstance(a, RoundAggregated)).record
    assert any(record.global_model["w"] is m for m in made)  # went out once, in the action
    assert ctrl.history[0].global_model == {} and ctrl.history[0].round == 1
    assert ctrl.history[0].contributors == {"site-1": 1, "site-2": 1}


def test_an_update_is_counted_on_arrival_and_its_arrays_are_not_kept() -> None:
    """However many sites answer, a round holds one running sum, not every update."""
    ctrl = RoundController(_cfg(), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    weights = np.full(3, 5.0)
    gone = weakref.ref(weights)
    ctrl.on_result("site-1", send.tasks[0].task_id, ModelUpdate({"w": weights}, "FULL", 3))
    del weights
    assert gone() is None
    actions = ctrl.on_result("site-2", send.tasks[1].task_id, ModelUpdate(_full(1.0), "FULL", 1))
    record = next(a for a in actions if isinstance(a, RoundAggregated)).record
    np.testing.assert_allclose(record.global_model["w"], (5.0 * 3 + 1.0) / 4)


def test_sites_disagreeing_without_a_global_model_fail_the_round_naming_the_later_one() -> None:
    ctrl = RoundController(_cfg(), SITES[:2])
    send = _send(ctrl.start())
    ctrl.on_result("site-1", send.tasks[0].task_id, ModelUpdate({"w": np.ones(3)}, "FULL", 1))
    done = _finished(
        ctrl.on_result("site-2", send.tasks[1].task_id, ModelUpdate({"w": np.ones(4)}, "FULL", 1))
    )
    assert done.status == EXECUTION_EXCEPTION and done.failed_sites == ("site-2",)
    assert "site-2 sent array 'w' with shape (4,), site-1 sent (3,)" in done.reason


def test_fedopt_job_uses_the_server_optimiser() -> None:
    cfg = _cfg(workflow="fedopt", num_rounds=1, fedopt=FedOptConfig("adam", 0.5, 0.9, 0.99, 1e-4))
    ctrl = RoundController(cfg, ["a"])
    send = _send(ctrl.start(_full(0.0)))
    done = _finished(_answer(ctrl, send, {"a": (1.0, 1)}))
    delta = 1.0
    m = 0.1 * delta
    v = 0.99 * 1e-8 + 0.01 * delta**2
    np.testing.assert_allclose(done.final_model["w"], 0.5 * m / (np.sqrt(v) + 1e-4))


def test_late_result_for_an_earlier_round_is_ignored() -> None:
    ctrl = RoundController(_cfg(min_responses=1), SITES[:2])
    send1 = _send(ctrl.start(_full(0.0)))
    ctrl.on_result("site-1", send1.tasks[0].task_id, ModelUpdate(_full(1.0), "FULL", 1))
    ctrl.on_timeout("train-1")  # aggregates site-1 only; site-2 is late
    assert ctrl.history[0].late_sites == ("site-2",)
    assert ctrl.round == 2
    assert (
        ctrl.on_result("site-2", send1.tasks[1].task_id, ModelUpdate(_full(9.0), "FULL", 1)) == []
    )
    assert ctrl.ignored == 1


def test_duplicate_and_foreign_results_are_ignored() -> None:
    ctrl = RoundController(_cfg(), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    task = send.tasks[0]
    ctrl.on_result("site-1", task.task_id, ModelUpdate(_full(1.0), "FULL", 1))
    assert ctrl.on_result("site-1", task.task_id, ModelUpdate(_full(1.0), "FULL", 1)) == []
    assert ctrl.on_result("site-2", task.task_id, ModelUpdate(_full(1.0), "FULL", 1)) == []
    assert ctrl.ignored == 2


def test_a_dropped_site_is_tolerated_while_min_responses_remain() -> None:
    ctrl = RoundController(_cfg(min_responses=2, num_rounds=2), SITES)
    send = _send(ctrl.start(_full(0.0)))
    assert ctrl.on_site_lost("site-3", "heartbeat timeout") == []
    actions = _answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (3.0, 1)})
    record = next(a for a in actions if isinstance(a, RoundAggregated)).record
    np.testing.assert_allclose(record.global_model["w"], 2.0)
    assert record.lost_sites == ("site-3",)
    assert [t.site for t in _send(actions).tasks] == ["site-1", "site-2"]


def test_losing_too_many_sites_ends_abnormal_naming_them() -> None:
    ctrl = RoundController(_cfg(min_responses=2), SITES)
    _send(ctrl.start(_full(0.0)))
    ctrl.on_site_lost("site-2", "heartbeat timeout")
    done = _finished(ctrl.on_site_lost("site-3", "connection lost"))
    assert done.status == ABNORMAL
    assert "site-2 (heartbeat timeout)" in done.reason and "site-3 (connection lost)" in done.reason
    assert done.failed_sites == ("site-2", "site-3")
    np.testing.assert_allclose(done.final_model["w"], 0.0)


def test_a_lost_site_that_already_answered_still_counts() -> None:
    ctrl = RoundController(_cfg(min_responses=2, num_rounds=1), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    _answer(ctrl, send, {"site-1": (2.0, 1)})
    assert ctrl.on_site_lost("site-1") == []
    done = _finished(_answer(ctrl, send, {"site-2": (4.0, 1)}))
    assert done.status == COMPLETED
    np.testing.assert_allclose(done.final_model["w"], 3.0)


def test_timeout_with_too_few_responses_ends_abnormal_naming_the_silent_sites() -> None:
    ctrl = RoundController(_cfg(min_responses=2), SITES)
    send = _send(ctrl.start(_full(0.0)))
    _answer(ctrl, send, {"site-1": (1.0, 1)})
    done = _finished(ctrl.on_timeout("train-1"))
    assert done.status == ABNORMAL
    assert "no answer from site-2, site-3" in done.reason
    assert done.failed_sites == ("site-2", "site-3")


def test_stale_timer_tokens_are_ignored() -> None:
    ctrl = RoundController(_cfg(), SITES[:1])
    send = _send(ctrl.start(_full(0.0)))
    _answer(ctrl, send, {"site-1": (1.0, 1)})
    assert ctrl.on_timeout("train-1") == []


def test_a_failed_task_ends_execution_exception_naming_the_site() -> None:
    ctrl = RoundController(_cfg(), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    done = _finished(ctrl.on_task_failed("site-2", send.tasks[1].task_id, "exit code 1: boom"))
    assert done.status == EXECUTION_EXCEPTION
    assert "site-2" in done.reason and "boom" in done.reason


def test_an_update_that_does_not_fit_ends_execution_exception() -> None:
    ctrl = RoundController(_cfg(), SITES[:1])
    send = _send(ctrl.start(_full(0.0)))
    bad = ModelUpdate({"w": np.zeros(7)}, "FULL", 1)
    done = _finished(ctrl.on_result("site-1", send.tasks[0].task_id, bad))
    assert done.status == EXECUTION_EXCEPTION and "shape (7,)" in done.reason


def test_validation_phase_runs_after_each_round_and_records_metrics() -> None:
    ctrl = RoundController(_cfg(validate_every_round=True, num_rounds=1), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    actions = _answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (1.0, 1)})
    vsend = _send(actions)
    assert {t.kind for t in vsend.tasks} == {"validate"} and vsend.model_round == 1
    np.testing.assert_allclose(vsend.model["w"], 1.0)
    a1 = ctrl.on_validation("site-1", vsend.tasks[0].task_id, {"mse": 0.5})
    assert a1 == [ValidationRecorded(ctrl.validations[0])]
    done = _finished(ctrl.on_validation("site-2", vsend.tasks[1].task_id, {"mse": 0.7}))
    assert done.status == COMPLETED
    assert [(v.round, v.site, v.metrics["mse"]) for v in ctrl.validations] == [
        (1, "site-1", 0.5),
        (1, "site-2", 0.7),
    ]


def test_validation_timeout_moves_on_to_the_next_round() -> None:
    ctrl = RoundController(_cfg(validate_every_round=True, num_rounds=2), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    vsend = _send(_answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (1.0, 1)}))
    ctrl.on_validation("site-1", vsend.tasks[0].task_id, {"mse": 0.5})
    actions = ctrl.on_timeout("validate-1")
    assert _send(actions).tasks[0].kind == "train" and ctrl.round == 2


def test_min_responses_above_the_site_count_ends_abnormal_at_start() -> None:
    done = _finished(RoundController(_cfg(min_responses=3), SITES[:2]).start(_full(0.0)))
    assert done.status == ABNORMAL and "min_responses is 3" in done.reason


def test_default_min_responses_is_every_site() -> None:
    ctrl = RoundController(_cfg(), SITES)
    _send(ctrl.start(_full(0.0)))
    assert _finished(ctrl.on_site_lost("site-1")).status == ABNORMAL


def test_abort_ends_aborted_and_later_events_do_nothing() -> None:
    ctrl = RoundController(_cfg(), SITES[:1])
    send = _send(ctrl.start(_full(0.0)))
    assert _finished(ctrl.abort("by admin@org_a.com")).status == ABORTED
    assert ctrl.on_result("site-1", send.tasks[0].task_id, ModelUpdate(_full(1), "FULL", 1)) == []
    assert ctrl.abort() == []


def test_first_round_without_initial_model_needs_full_updates() -> None:
    ctrl = RoundController(_cfg(num_rounds=1), SITES[:2])
    send = _send(ctrl.start(None))
    assert send.model == {}
    done = _finished(_answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (3.0, 1)}))
    np.testing.assert_allclose(done.final_model["w"], 2.0)


def test_metric_rows_take_the_round_of_the_sites_current_task() -> None:
    ctrl = RoundController(_cfg(), SITES[:1])
    ctrl.start(_full(0.0))
    row = ctrl.metric_row("site-1", "loss", 0.25, 3, 1700000000.0)
    assert (row.site, row.round, row.key, row.value, row.step) == ("site-1", 1, "loss", 0.25, 3)


def test_start_twice_is_a_bug() -> None:
    ctrl = RoundController(_cfg(), SITES[:1])
    ctrl.start(None)
    with pytest.raises(RuntimeError):
        ctrl.start(None)


def test_losing_a_site_during_the_last_validation_still_completes() -> None:
    ctrl = RoundController(_cfg(validate_every_round=True, num_rounds=1), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    vsend = _send(_answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (1.0, 1)}))
    ctrl.on_validation("site-1", vsend.tasks[0].task_id, {"mse": 0.5})
    assert _finished(ctrl.on_site_lost("site-2")).status == COMPLETED


def test_losing_too_many_sites_during_validation_ends_abnormal_before_the_next_round() -> None:
    ctrl = RoundController(_cfg(validate_every_round=True, num_rounds=2), SITES[:2])
    send = _send(ctrl.start(_full(0.0)))
    _send(_answer(ctrl, send, {"site-1": (1.0, 1), "site-2": (1.0, 1)}))
    done = _finished(ctrl.on_site_lost("site-2", "heartbeat timeout"))
    assert done.status == ABNORMAL and "after round 1" in done.reason


# -- resuming after a server restart ---------------------------------------------------


def _after_round_one(
    cfg: ServerConfig, sites=SITES[:2], answers=None
) -> tuple[RoundController, ResumePoint]:
    """A controller that ran round 1, and the resume point a checkpoint holds after it."""
    ctrl = RoundController(cfg, sites)
    send = _send(ctrl.start(_full(0.0)))
    answers = answers or {s: (float(i + 1), i + 1) for i, s in enumerate(sites)}
    actions = _answer(ctrl, send, answers)
    record = next(a for a in actions if isinstance(a, RoundAggregated)).record
    point = ResumePoint(
        round=1,
        global_model={k: v.copy() for k, v in record.global_model.items()},
        history=tuple(ctrl.history),
        optimizer=ctrl.optimizer_state(),
    )
    return ctrl, point


def test_a_resumed_controller_goes_on_with_the_next_round_and_new_task_ids() -> None:
    _, point = _after_round_one(_cfg(num_rounds=3))
    ctrl = RoundController(_cfg(num_rounds=3), SITES[:2], attempt=1)
    send = _send(ctrl.resume(point))
    assert [t.task_id for t in send.tasks] == ["r2.1-train-site-1", "r2.1-train-site-2"]
    assert send.model_round == 1 and {t.round for t in send.tasks} == {2}
    np.testing.assert_allclose(send.model["w"], point.global_model["w"])
    assert [r.round for r in ctrl.history] == [1]


def test_an_answer_to_a_task_sent_before_the_restart_is_never_counted() -> None:
    _, point = _after_round_one(_cfg(num_rounds=3))
    ctrl = RoundController(_cfg(num_rounds=3), SITES[:2], attempt=1)
    ctrl.resume(point)
    assert ctrl.on_result("site-1", "r2-train-site-1", ModelUpdate(_full(9.0), "FULL", 5)) == []
    assert ctrl.ignored == 1 and ctrl.current_task("site-1").task_id == "r2.1-train-site-1"


def test_a_resumed_controller_leaves_out_the_sites_that_did_not_come_back() -> None:
    _, point = _after_round_one(_cfg(num_rounds=3, min_responses=2), SITES)
    ctrl = RoundController(_cfg(num_rounds=3, min_responses=2), SITES, attempt=1)
    lost = {"site-3": "did not reconnect within 5 s of the server restart"}
    send = _send(ctrl.resume(dataclasses.replace(point, lost=lost)))
    assert [t.site for t in send.tasks] == ["site-1", "site-2"]
    assert ctrl.lost == lost


def test_resuming_with_too_few_sites_back_ends_abnormal_naming_them() -> None:
    _, point = _after_round_one(_cfg(num_rounds=3))
    ctrl = RoundController(_cfg(num_rounds=3), SITES[:2], attempt=1)
    done = _finished(ctrl.resume(dataclasses.replace(point, lost={"site-2": "did not return"})))
    assert done.status == ABNORMAL and done.failed_sites == ("site-2",)
    assert "resuming after round 1" in done.reason and "site-2 (did not return)" in done.reason


def test_resuming_after_the_last_round_completes_with_its_model() -> None:
    _, point = _after_round_one(_cfg(num_rounds=1))
    ctrl = RoundController(_cfg(num_rounds=1), SITES[:2], attempt=1)
    done = _finished(ctrl.resume(dataclasses.replace(point, lost={"site-2": "gone"})))
    assert done.status == COMPLETED
    np.testing.assert_allclose(done.final_model["w"], point.global_model["w"])


def test_resuming_at_round_zero_starts_from_the_initial_model() -> None:
    ctrl = RoundController(_cfg(), SITES[:2], attempt=2)
    send = _send(ctrl.resume(ResumePoint(round=0, global_model=_full(1.0))))
    assert [t.task_id for t in send.tasks] == ["r1.2-train-site-1", "r1.2-train-site-2"]
    assert send.model_round == 0


def test_resuming_asks_only_the_sites_that_had_not_validated_the_round() -> None:
    cfg = _cfg(num_rounds=2, validate_every_round=True)
    _, point = _after_round_one(cfg)
    ctrl = RoundController(cfg, SITES[:2], attempt=1)
    send = _send(ctrl.resume(dataclasses.replace(point, validated=frozenset({"site-1"}))))
    assert [(t.site, t.kind, t.round) for t in send.tasks] == [("site-2", "validate", 1)]
    actions = ctrl.on_validation("site-2", send.tasks[0].task_id, {"acc": 0.5})
    assert isinstance(actions[0], ValidationRecorded)
    assert _send(actions).tasks[0].round == 2  # then round 2 for every site


def test_a_resumed_fedopt_job_reaches_the_model_of_an_uninterrupted_one() -> None:
    cfg = _cfg(workflow="fedopt", num_rounds=2, fedopt=FedOptConfig("adam", 0.5, 0.9, 0.99, 1e-4))
    answers = {"site-1": (1.0, 1), "site-2": (4.0, 3)}
    uninterrupted = RoundController(cfg, SITES[:2])
    actions = _answer(uninterrupted, _send(uninterrupted.start(_full(0.0))), answers)
    expected = _finished(_answer(uninterrupted, _send(actions), answers)).final_model
    _, point = _after_round_one(cfg, answers=answers)
    assert point.optimizer is not None  # m and v after round 1
    resumed = RoundController(cfg, SITES[:2], attempt=1)
    done = _finished(_answer(resumed, _send(resumed.resume(point)), answers))
    np.testing.assert_allclose(done.final_model["w"], expected["w"])
    without_state = RoundController(cfg, SITES[:2], attempt=1)
    other = dataclasses.replace(point, optimizer=None)
    differs = _finished(_answer(without_state, _send(without_state.resume(other)), answers))
    assert not np.allclose(differs.final_model["w"], expected["w"])  # the state matters
