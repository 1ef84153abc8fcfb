"""The round controller: a pure state machine that runs a FedAvg/FedOpt job.

Theory of operation: the controller never does I/O, never sleeps and never reads a clock.
The server's job runner feeds it events (``start``, ``on_result``, ``on_validation``,
``on_task_failed``, ``on_site_lost``, ``on_timeout``, ``abort``) and carries out the
actions each call returns, in order: :class:`SendTasks` (one global model for several
sites, so the runner serializes it once), :class:`StartTimer` (call ``on_timeout(token)``
after ``seconds``; stale tokens are ignored, so timers never need cancelling),
:class:`RoundAggregated` and :class:`ValidationRecorded` (store them: that is the job's
model trail and validation table) and finally one :class:`JobFinished`.

A job runs ``num_rounds`` training rounds, each optionally followed by a validation phase
in which every active site evaluates the new global model. A training round ends when every
active site has answered, or at its timeout; it is aggregated from the updates received if
there are at least ``min_responses`` of them. A lost site leaves the active set (its update,
if it already sent one, still counts); when the sites left cannot reach ``min_responses``
the job ends ``FINISHED:ABNORMAL`` naming the missing sites. User code failing on a site, or
an update that does not fit the global model, ends it ``FINISHED:EXECUTION_EXCEPTION``.
Results are matched by task id, so a late answer to an earlier round is ignored.

Resuming after a server restart: a controller made with ``attempt`` k > 0 goes on from a
:class:`ResumePoint` (the last completed round, its model, the round records, the sites
lost, the FedOpt state) with :meth:`RoundController.resume` instead of ``start``. Its task
ids carry the attempt (``r3.1-train-site-1``), so an answer to a task sent before the
restart never matches a task of the resumed round: nothing is aggregated twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from flare_protocol.app_config import ServerConfig
from flare_protocol.errors import InvalidModel
from flare_protocol.job_status import JobStatus
from flare_protocol.models import Params, check_params
from flare_server.workflows.aggregation import (
    Allocator,
    ModelUpdate,
    RunningMean,
    empty_array,
)
from flare_server.workflows.fedopt import ServerOptimizer
from flare_server.workflows.records import MetricRow, RoundRecord, ValidationRecord

__all__ = [
    "ABNORMAL",
    "ABORTED",
    "COMPLETED",
    "EXECUTION_EXCEPTION",
    "Action",
    "JobFinished",
    "Phase",
    "ResumePoint",
    "RoundAggregated",
    "RoundController",
    "SendTasks",
    "StartTimer",
    "Task",
    "ValidationRecorded",
]

COMPLETED = JobStatus.FINISHED_COMPLETED.value
ABNORMAL = JobStatus.FINISHED_ABNORMAL.value
EXECUTION_EXCEPTION = JobStatus.FINISHED_EXECUTION_EXCEPTION.value
ABORTED = JobStatus.FINISHED_ABORTED.value


class Phase(str, Enum):
    """Where the controller is."""

    IDLE = "idle"
    TRAIN = "train"
    VALIDATE = "validate"
    DONE = "done"


@dataclass(frozen=True)
class Task:
    """One unit of work for one site."""

    task_id: str
    site: str
    kind: str  # "train" | "validate"
    round: int
    total_rounds: int


@dataclass(frozen=True)
class SendTasks:
    """Send ``model`` with each task to its site. ``model_round`` 0 is the initial model."""

    tasks: tuple[Task, ...]
    model: Params = field(repr=False)
    model_round: int


@dataclass(frozen=True)
class StartTimer:
    """Call ``on_timeout(token)`` after ``seconds``."""

    token: str
    seconds: float


@dataclass(frozen=True)
class RoundAggregated:
    """A new global model: store it (the model trail)."""

    record: RoundRecord


@dataclass(frozen=True)
class ValidationRecorded:
    """A site's validation of a global model: store it."""

    record: ValidationRecord


@dataclass(frozen=True)
class JobFinished:
    """The job is over: ``status`` is a FINISHED:* job status, ``reason`` says why."""

    status: str
    reason: str
    final_model: Params | None = field(repr=False)
    failed_sites: tuple[str, ...] = ()


Action = SendTasks | StartTimer | RoundAggregated | ValidationRecorded | JobFinished


@dataclass(frozen=True)
class ResumePoint:
    """Where a job interrupted by a server restart goes on: after its last completed round."""

    #: The last aggregated round (0: none yet, the job starts over from its initial model).
    round: int
    #: The global model after ``round`` (the initial model for round 0; {}: none).
    global_model: Params = field(repr=False)
    #: The records of rounds 1..``round``, without their models.
    history: tuple[RoundRecord, ...] = ()
    #: site -> why it is gone (lost before the restart, or it did not come back).
    lost: Mapping[str, str] = field(default_factory=dict)
    #: Sites whose validation of ``round``'s model is already recorded (not asked again).
    validated: frozenset[str] = frozenset()
    #: FedOpt's ``(m, v)`` after ``round`` (None: FedAvg, or no round yet).
    optimizer: tuple[Params, Params] | None = field(default=None, repr=False)


class RoundController:
    """Runs one job's rounds; see the module docstring for the protocol."""

    def __init__(
        self,
        config: ServerConfig,
        sites: Sequence[str],
        *,
        min_responses: int | None = None,
        allocate: Allocator = empty_array,
        attempt: int = 0,
    ) -> None:
        """
        Args:
            config: the app's parsed server config.
            sites: the sites the job runs on.
            min_responses: overrides ``config.min_responses``; when both are None, every
                starting site must answer every round.
            allocate: makes the arrays of each new global model (the server passes
                pooled buffers; see :class:`~flare_protocol.models.BufferPool`).
            attempt: how many times the job was resumed after a server restart; part of
                every task id, so that no answer to an earlier attempt's task matches.
        """
        if not sites:
            raise ValueError("a job needs at least one site")
        self.config = config
        self.sites: tuple[str, ...] = tuple(dict.fromkeys(sites))
        self.min_responses = min_responses or config.min_responses or len(self.sites)
        self.active: set[str] = set(self.sites)
        self.lost: dict[str, str] = {}
        self.phase = Phase.IDLE
        self.round = 0
        self.global_model: Params = {}
        #: One record per aggregated round, without its model (that goes out once, in
        #: :class:`RoundAggregated`; keeping every round's arrays would pin their memory).
        self.history: list[RoundRecord] = []
        self._allocate = allocate
        self.validations: list[ValidationRecord] = []
        self.finished: JobFinished | None = None
        self.ignored = 0  # late, duplicate or unknown results
        self._optimizer = (
            ServerOptimizer(config.fedopt)
            if config.workflow == "fedopt" and config.fedopt
            else None
        )
        self._pending: dict[str, Task] = {}  # task_id -> task still awaited
        #: site -> its update of this round, without arrays (those are in ``_mean``).
        self._results: dict[str, ModelUpdate] = {}
        self._mean = RunningMean({}, allocate=allocate)
        self._validated: dict[str, dict[str, float]] = {}
        self._timer = ""
        self._attempt = f".{attempt}" if attempt else ""

    # -- properties ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once a :class:`JobFinished` was returned."""
        return self.finished is not None

    @property
    def status(self) -> str | None:
        """The final job status, or None while running."""
        return self.finished.status if self.finished else None

    def optimizer_state(self) -> tuple[Params, Params] | None:
        """FedOpt's ``(m, v)`` state (the live arrays: the next round changes them in
        place), None for FedAvg or before the optimiser's first step."""
        if self._optimizer is None or not self._optimizer.m:
            return None
        return dict(self._optimizer.m), dict(self._optimizer.v)

    def current_task(self, site: str) -> Task | None:
        """The task a site is working on, if any."""
        for task in self._pending.values():
            if task.site == site:
                return task
        return None

    # -- events ----------------------------------------------------------------------

    def start(self, initial_model: Params | None = None) -> list[Action]:
        """Begin round 1 with ``initial_model`` (None or {} : sites must send FULL weights)."""
        if self.phase is not Phase.IDLE:
            raise RuntimeError("the controller was already started")
        try:
            self.global_model = check_params(initial_model or {})
        except InvalidModel as exc:
            return self._finish(ABNORMAL, f"the initial model is unusable: {exc}")
        if len(self.sites) < self.min_responses:
            return self._finish(
                ABNORMAL,
                f"min_responses is {self.min_responses} but the job has only "
                f"{len(self.sites)} site(s): {', '.join(self.sites)}",
            )
        return self._begin_round(1)

    def resume(self, point: ResumePoint) -> list[Action]:
        """Go on from ``point`` after a server restart, instead of :meth:`start`.

        The sites of ``point.lost`` leave the active set. When ``validate_every_round``
        holds and some active site has not validated ``point.round``'s model, it is asked
        to (only those); otherwise the next round begins, or the job completes when
        ``point.round`` was the last one.
        """
        if self.phase is not Phase.IDLE:
            raise RuntimeError("the controller was already started")
        for site, why in point.lost.items():
            if site in self.active:
                self.active.discard(site)
                self.lost[site] = why
        remaining = point.round < self.config.num_rounds
        if remaining and len(self.active) < self.min_responses:
            self.round = point.round
            return self._abnormal_lost(f"resuming after round {point.round}")
        if point.round == 0:
            return self.start(point.global_model)
        try:
            self.global_model = check_params(point.global_model)
        except InvalidModel as exc:
            return self._finish(ABNORMAL, f"the model of round {point.round} is unusable: {exc}")
        self.round = point.round
        self.history = list(point.history)
        if self._optimizer is not None and point.optimizer is not None:
            m, v = point.optimizer
            self._optimizer.m = {name: np.array(a, copy=True) for name, a in m.items()}
            self._optimizer.v = {name: np.array(a, copy=True) for name, a in v.items()}
        unvalidated = self.active - point.validated
        if self.config.validate_every_round and unvalidated:
            self.phase = Phase.VALIDATE
            self._validated = {}
            return self._send("validate", self.round, only=unvalidated)
        return self._next()

    def on_result(self, site: str, task_id: str, update: ModelUpdate) -> list[Action]:
        """A site's training result for ``task_id``."""
        task = self._expect(site, task_id, "train")
        if task is None:
            return []
        try:
            params = check_params(update.params)
            update = ModelUpdate(params, update.params_type, update.num_examples, update.metrics)
            self._mean.add(site, update)
        except InvalidModel as exc:
            return self._finish(
                EXECUTION_EXCEPTION, f"round {self.round}: {exc}", failed_sites=(site,)
            )
        del self._pending[task_id]
        # Counted into the round's mean: the arrays themselves are not kept.
        self._results[site] = dataclasses.replace(update, params={})
        return self._maybe_close_round()

    def on_validation(self, site: str, task_id: str, metrics: Mapping[str, float]) -> list[Action]:
        """A site's validation metrics of the current global model."""
        task = self._expect(site, task_id, "validate")
        if task is None:
            return []
        del self._pending[task_id]
        record = ValidationRecord(round=task.round, site=site, metrics=dict(metrics))
        self.validations.append(record)
        self._validated[site] = dict(metrics)
        actions: list[Action] = [ValidationRecorded(record)]
        return actions + self._maybe_close_validation()

    def on_task_failed(self, site: str, task_id: str, error: str) -> list[Action]:
        """User code failed on a site (crash, bad output): the job cannot go on."""
        task = self._expect(site, task_id, None)
        if task is None:
            return []
        return self._finish(
            EXECUTION_EXCEPTION,
            f"{task.kind} task of round {task.round} failed on {site}: {error}",
            failed_sites=(site,),
        )

    def on_site_lost(self, site: str, reason: str = "connection lost") -> list[Action]:
        """A site disconnected or stopped answering heartbeats."""
        if self.done or site not in self.active:
            return []
        self.active.discard(site)
        self.lost[site] = reason
        for task_id in [t for t, task in self._pending.items() if task.site == site]:
            del self._pending[task_id]
        if self.phase is Phase.TRAIN:
            reachable = len(self._results) + sum(
                1 for t in self._pending.values() if t.kind == "train"
            )
            if reachable < self.min_responses:
                return self._abnormal_lost(f"round {self.round}")
            return self._maybe_close_round()
        if self.phase is Phase.VALIDATE:
            if self.round < self.config.num_rounds and len(self.active) < self.min_responses:
                return self._abnormal_lost(f"after round {self.round}")
            return self._maybe_close_validation()
        return []

    def on_timeout(self, token: str) -> list[Action]:
        """A timer from :class:`StartTimer` fired; stale tokens are ignored."""
        if self.done or token != self._timer:
            return []
        late = sorted(task.site for task in self._pending.values())
        if self.phase is Phase.TRAIN:
            if len(self._results) < self.min_responses:
                return self._finish(
                    ABNORMAL,
                    f"round {self.round} timed out after {self.config.round_timeout:g}s with "
                    f"{len(self._results)} of the {self.min_responses} responses needed; "
                    f"no answer from {', '.join(late) or 'any site'}",
                    failed_sites=tuple(late),
                )
            return self._aggregate(late=tuple(late))
        self._pending.clear()
        return self._after_validation()

    def abort(self, reason: str = "aborted by an admin") -> list[Action]:
        """End the job now with ``FINISHED:ABORTED``."""
        if self.done:
            return []
        return self._finish(ABORTED, reason)

    def metric_row(
        self,
        site: str,
        key: str,
        value: float,
        step: int | None,
        time: float,
        round: int | None = None,
    ) -> MetricRow:
        """A metrics-log row; the round defaults to the site's current task's."""
        if round is None:
            task = self.current_task(site)
            round = task.round if task else self.round
        return MetricRow(site=site, round=round, key=key, value=float(value), step=step, time=time)

    # -- internals -------------------------------------------------------------------

    def _expect(self, site: str, task_id: str, kind: str | None) -> Task | None:
        task = self._pending.get(task_id)
        if self.done or task is None or task.site != site or (kind and task.kind != kind):
            self.ignored += 1
            return None
        return task

    def _begin_round(self, number: int) -> list[Action]:
        self.round = number
        self.phase = Phase.TRAIN
        self._results = {}
        self._mean = RunningMean(self.global_model, allocate=self._allocate)
        return self._send("train", self.round - 1)

    def _send(
        self, kind: str, model_round: int, only: Collection[str] | None = None
    ) -> list[Action]:
        prefix = f"r{self.round}{self._attempt}-{kind}"
        tasks = tuple(
            Task(f"{prefix}-{site}", site, kind, self.round, self.config.num_rounds)
            for site in self.sites
            if site in self.active and (only is None or site in only)
        )
        self._pending = {task.task_id: task for task in tasks}
        self._timer = f"{kind}-{self.round}"
        return [
            SendTasks(tasks, self.global_model, model_round),
            StartTimer(self._timer, self.config.round_timeout),
        ]

    def _maybe_close_round(self) -> list[Action]:
        if self.phase is Phase.TRAIN and not self._pending:
            return self._aggregate(late=())
        return []

    def _aggregate(self, late: tuple[str, ...]) -> list[Action]:
        self._pending.clear()
        self._timer = ""
        try:
            if self._optimizer is not None:
                new_model = self._optimizer.step(
                    self.global_model, self._mean, allocate=self._allocate
                )
            else:
                new_model = self._mean.result()
        except InvalidModel as exc:
            return self._finish(EXECUTION_EXCEPTION, f"round {self.round}: {exc}")
        self.global_model = new_model
        record = RoundRecord(
            round=self.round,
            global_model=new_model,
            contributors={site: u.num_examples for site, u in self._results.items()},
            params_types={site: u.params_type.value for site, u in self._results.items()},
            site_metrics={site: dict(u.metrics) for site, u in self._results.items()},
            late_sites=late,
            lost_sites=tuple(sorted(self.lost)),
        )
        self._results = {}
        self._mean = RunningMean({}, allocate=self._allocate)  # frees the round's sums
        self.history.append(dataclasses.replace(record, global_model={}))
        actions: list[Action] = [RoundAggregated(record)]
        if self.config.validate_every_round and self.active:
            self.phase = Phase.VALIDATE
            self._validated = {}
            return actions + self._send("validate", self.round)
        return actions + self._next()

    def _maybe_close_validation(self) -> list[Action]:
        if self.phase is Phase.VALIDATE and not self._pending:
            return self._after_validation()
        return []

    def _after_validation(self) -> list[Action]:
        self._timer = ""
        return self._next()

    def _next(self) -> list[Action]:
        if self.round >= self.config.num_rounds:
            return self._finish(
                COMPLETED, f"{self.config.num_rounds} round(s) completed", model=self.global_model
            )
        if len(self.active) < self.min_responses:
            return self._abnormal_lost(f"after round {self.round}")
        return self._begin_round(self.round + 1)

    def _abnormal_lost(self, when: str) -> list[Action]:
        lost = ", ".join(f"{site} ({why})" for site, why in sorted(self.lost.items()))
        return self._finish(
            ABNORMAL,
            f"{when}: {len(self.active)} site(s) left, {self.min_responses} response(s) needed; "
            f"lost {lost}",
            failed_sites=tuple(sorted(self.lost)),
        )

    def _finish(
        self,
        status: str,
        reason: str,
        *,
        model: Params | None = None,
        failed_sites: tuple[str, ...] = (),
    ) -> list[Action]:
        self.phase = Phase.DONE
        self._pending.clear()
        self._timer = ""
        final = model if model is not None else (self.global_model or None)
        self.finished = JobFinished(status, reason, final, failed_sites)
        return [self.finished]
