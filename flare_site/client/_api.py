"""The Client API a training script uses: ``import flare_site.client as flare``.

The functions keep one module-level connection to the site that launched the script
(found through environment variables, see ``_ipc``). ``is_running()`` asks the site for
the next task and keeps it for ``receive()``; it returns False once the site says the
job is over, and the script should then return.
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from flare_protocol import _malloc
from flare_protocol.errors import FlareError, InvalidModel, LocalIOError, MessageError
from flare_protocol.message import (
    DRIVER_NODE_ID,
    Error,
    Message,
    MessageType,
    Metadata,
    error_reply_wire,
    from_wire,
    node_id,
    npz_of,
    to_wire,
)
from flare_protocol.models import BufferPool, ParamsType, load_params, save_params
from flare_protocol.records import ConfigsRecord, ParametersRecord, RecordSet
from flare_protocol.tracking import MAX_RECORD_CHARS, RECORD_KINDS
from flare_site.client import _ipc
from flare_site.client._model import FLModel

__all__ = [
    "get_job_id",
    "get_site_name",
    "init",
    "is_evaluate",
    "is_running",
    "is_train",
    "log_metric",
    "log_record",
    "receive",
    "receive_message",
    "send",
    "send_reply",
    "shutdown",
]


#: Most bytes of model buffers the script keeps for reuse (larger models are not pooled);
#: the environment variable ``FLARE_MODEL_BUFFER_BYTES`` overrides it (0: keep none).
_BUFFER_BYTES = 2 * 1024**3
ENV_BUFFER_BYTES = "FLARE_MODEL_BUFFER_BYTES"


def _buffer_bytes() -> int:
    raw = os.environ.get(ENV_BUFFER_BYTES)
    if raw is None:
        return _BUFFER_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise FlareError(f"{ENV_BUFFER_BYTES} must be a number of bytes >= 0, got {raw!r}")
    return value


class _Client:
    def __init__(self) -> None:
        # Received models are read into buffers reused once the script lets go of the
        # previous model's arrays (fresh memory costs ~0.3 s per 100 MB on some VMs).
        # Checked first: a bad setting must stop the script before it says hello.
        self.buffers = BufferPool(max_bytes=_buffer_bytes())
        path = os.environ.get(_ipc.ENV_SOCKET)
        token = os.environ.get(_ipc.ENV_TOKEN)
        if not path or not token:
            raise FlareError(
                "this script was not started by a flare site: submit it in a job, or try it "
                "locally with 'flare job run train --path APP --input MODEL.npz --output OUT.npz'"
            )
        self.mode = os.environ.get(_ipc.ENV_MODE, "script")
        self.site = os.environ.get(_ipc.ENV_SITE, "")
        self.job_id = os.environ.get(_ipc.ENV_JOB, "")
        # Sends are atomic per frame; only one request waits for a reply at a time. A
        # metric from another thread never waits behind a long receive().
        self._send_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._channel = _ipc.BlockingChannel(path)
        self._channel.send({"op": "hello", "token": token, "pid": os.getpid()})
        reply = self._channel.recv()
        if reply.get("op") != "welcome":
            raise FlareError(f"the flare site refused this script: {reply.get('message', reply)}")
        # A task or a Driver API message ("op": "task" | "message"):
        self.task: dict[str, Any] | None = None  # fetched by is_running(), not yet received
        self.current: dict[str, Any] | None = None  # received, not yet answered
        self.message: Message | None = None  # the current item as a Message (receive_message)
        self.last_kind: str | None = None
        self.stopped = False

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._request_lock:
            self.post(message)
            return self._channel.recv()

    def post(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self._channel.send(message)

    def fetch(self) -> None:
        if self.task is None and not self.stopped:
            if self.mode != "script":
                raise FlareError("receive() is only available to the script executor")
            reply = self.request({"op": "next"})
            if reply["op"] in ("task", "message"):
                self.task = reply
            else:
                self.stopped = True

    def close(self) -> None:
        self._channel.close()


_client: _Client | None = None


def _get() -> _Client:
    if _client is None:
        raise FlareError("call flare.init() first")
    return _client


def init() -> None:
    """Connect to the site that launched this script (idempotent).

    Leaves this process's malloc settings alone unless ``FLARE_MALLOC_TUNING=1`` asks
    for the daemons' tuning (keep freed transfer-sized buffers for reuse; see
    ``flare_protocol._malloc``).

    Raises:
        FlareError: the script was not launched by a flare site.
    """
    global _client
    if _client is None:
        _malloc.tune_if_requested()  # the user's process: tuned only if they ask
        _client = _Client()


def is_running() -> bool:
    """True while the job has work for this script (waits for the next task)."""
    client = _get()
    if client.current is not None:
        return True
    client.fetch()
    return not client.stopped


def receive() -> FLModel | None:
    """The next task's global model, or None when the job is over.

    ``meta`` holds ``task`` ("train" or "validate") and ``task_id``. In round 1 of a job
    without an initial model, ``params`` is empty: send FULL weights.
    """
    client = _get()
    if client.current is not None:
        raise FlareError("receive() called twice: send() the result of the current task first")
    client.fetch()
    if client.stopped or client.task is None:
        return None
    if client.task["op"] == "message":
        raise FlareError(
            "a Driver API message is waiting (this is a driver job): read it with "
            "flare.receive_message() and answer with flare.send_reply()"
        )
    task, client.task = client.task, None
    client.current = task
    client.last_kind = task["kind"]
    params = load_params(task["model_path"], pool=client.buffers) if task.get("model_path") else {}
    return FLModel(
        params=params,
        params_type=ParamsType.FULL,
        current_round=task["round"],
        total_rounds=task["total_rounds"],
        meta={"task": task["kind"], "task_id": task["task_id"], "job_id": client.job_id},
    )


def _clean_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
        ):
            raise FlareError(f"metric {key!r} must be a number under a string key, got {value!r}")
        if not math.isfinite(value):
            raise FlareError(f"metric {key!r} is {value}: only finite numbers can be reported")
        out[key] = float(value)
    return out


def send(model: FLModel) -> None:
    """Answer the current task: a training update, or validation ``metrics``.

    Raises:
        FlareError: no task was received, ``num_examples`` is missing, or the site refused it.
        InvalidModel: ``params`` are not a dict of numeric numpy arrays.
    """
    client = _get()
    task = client.current
    if task is None:
        raise FlareError("send() called without a task: call flare.receive() first")
    metrics = _clean_metrics(model.metrics)
    message: dict[str, Any] = {"op": "result", "task_id": task["task_id"], "metrics": metrics}
    if task["kind"] == "train":
        num = model.meta.get("num_examples")
        if isinstance(num, bool) or not isinstance(num, int) or num < 0:
            raise FlareError(
                "a training result needs meta={'num_examples': n} with n an integer >= 0 "
                f"(the FedAvg weight), got {num!r}"
            )
        try:
            params_type = ParamsType(
                model.params_type.value
                if isinstance(model.params_type, ParamsType)
                else str(model.params_type).upper()
            )
        except ValueError as exc:
            raise InvalidModel(
                f"params_type must be FULL or DIFF, got {model.params_type!r}"
            ) from exc
        # Not fsynced: the site reads it at once, and a crash ends the task anyway.
        output = Path(task["output_path"])
        try:
            save_params(model.params, output, durable=False, pool=client.buffers)
        except OSError as exc:  # nothing partial is left: save_params writes a temp file
            raise _result_not_saved(exc, output) from exc
        message.update(params_type=params_type.value, meta=_json_meta(model.meta))
    reply = client.request(message)
    if reply["op"] != "ok":
        raise FlareError(f"the site refused the result: {reply.get('message', reply)}")
    client.current = None


def _result_not_saved(exc: OSError, path: Path) -> LocalIOError:
    """The error for a training result that could not be written (a full disk, mostly)."""
    error = LocalIOError.of(exc, "save the training result to", path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        error.message += (
            "; the site's disk is full: free space on that file system (the site's workspace, "
            "where its jobs run) and run the job again"
        )
        error.args = (error.message,)
    return error


def _json_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[str(key)] = value
    return out


def log_metric(key: str, value: float, step: int | None = None) -> None:
    """Stream one scalar to the server's metrics log (tagged with the current round)."""
    client = _get()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FlareError(f"metric {key!r} must be a finite number, got {value!r}")
    client.post(
        {
            "op": "metric",
            "key": str(key),
            "value": float(value),
            "step": None if step is None else int(step),
            "round": _round_now(client),
            "time": time.time(),
        }
    )


def log_record(kind: str, key: str, text: str, step: int | None = None) -> None:
    """Stream a param, tag or text (``kind``) to the server's params log (the writers use
    it; see :mod:`flare_site.client.tracking`)."""
    client = _get()
    if kind not in RECORD_KINDS:
        raise FlareError(f"record kind must be one of {sorted(RECORD_KINDS)}, got {kind!r}")
    if not isinstance(text, str):
        raise FlareError(f"{kind} {key!r} must be a string, got {type(text).__name__}")
    if len(text) > MAX_RECORD_CHARS:
        raise FlareError(
            f"{kind} {key!r} is {len(text)} characters long; at most {MAX_RECORD_CHARS} are "
            "recorded (write longer texts to a file in FLARE_JOB_WORKSPACE)"
        )
    client.post(
        {
            "op": "metric",
            "kind": kind,
            "key": str(key),
            "text": text,
            "step": None if step is None else int(step),
            "round": _round_now(client),
            "time": time.time(),
        }
    )


def _round_now(client: _Client) -> int | None:
    """The round of the item being worked on: a task's, or a message's group id when it
    is a number (the round, as Flower's examples use it)."""
    item = client.current or client.task
    if item is None:
        return None
    if item["op"] == "task":
        return int(item["round"])
    group = item.get("message", {}).get("group_id")
    return int(group) if isinstance(group, str) and group.isdigit() else None


def receive_message() -> Message | None:
    """The next Driver API message for this site (Flower's ``Message``), or None when the
    job is over. Answer it with :func:`send_reply`.

    In a job of a built-in workflow (FedAvg, FedOpt) each task arrives as a message too:
    a ``train`` or ``evaluate`` message whose content holds the global model as the
    ParametersRecord ``"arrays"`` and the ConfigsRecord ``"config"`` (``server-round``,
    ``num-rounds``), so a ClientApp serves both kinds of job (docs/driver.md).

    Raises:
        FlareError: a message is still unanswered, or what arrived is malformed.
    """
    client = _get()
    if client.current is not None:
        raise FlareError(
            "receive_message() called twice: answer the current message with send_reply() first"
        )
    client.fetch()
    if client.stopped or client.task is None:
        return None
    item, client.task = client.task, None
    if item["op"] == "task":
        client.current = item
        client.last_kind = item["kind"]
        client.message = _task_message(client, item)
        return client.message
    npz = item.get("npz_path")
    try:
        message = from_wire(
            item.get("message"), Path(npz) if npz else None, where=f"message {item['task_id']}"
        )
    except MessageError as exc:
        raw = item.get("message")
        data = error_reply_wire(
            raw if isinstance(raw, dict) else {}, 0, f"the message is malformed: {exc.message}"
        )
        client.request({"op": "reply", "message_id": item["task_id"], "message": data})
        raise FlareError(
            f"a malformed message arrived and was answered with an error: {exc.message}"
        ) from None
    client.current = item
    kind = message.metadata.message_type.split(".", 1)[0]
    client.last_kind = {"evaluate": "validate"}.get(kind, kind)
    client.message = message
    return message


def _task_message(client: _Client, task: dict[str, Any]) -> Message:
    """A built-in workflow's task as a Driver API message (see receive_message)."""
    model = load_params(task["model_path"], pool=client.buffers) if task.get("model_path") else {}
    content = RecordSet(
        {
            "arrays": ParametersRecord(model),
            "config": ConfigsRecord(
                {"server-round": task["round"], "num-rounds": task["total_rounds"]}
            ),
        }
    )
    metadata = Metadata(
        run_id=client.job_id,
        message_id=task["task_id"],
        src_node_id=DRIVER_NODE_ID,
        dst_node_id=node_id(client.site),
        reply_to_message_id="",
        group_id=str(task["round"]),
        created_at=time.time(),
        ttl=0.0,
        message_type=MessageType.TRAIN if task["kind"] == "train" else MessageType.EVALUATE,
    )
    return Message(metadata=metadata, content=content)


def send_reply(reply: Message | RecordSet | Error) -> None:
    """Answer the current message: a reply ``Message`` (``Message(content, reply_to=msg)``),
    or just its content (a RecordSet) or an ``Error``.

    For a built-in workflow's task (see :func:`receive_message`), a ``train`` reply gives
    its update as its one ParametersRecord (``"arrays"`` when there are several), its
    weight as the MetricsRecord entry ``num-examples`` (Flower's key; ``num_examples``
    too), and optionally ``params-type`` ``"DIFF"`` in a ConfigsRecord; its other numbers
    are its metrics.

    Raises:
        FlareError: no message was received, or the site refused the reply.
        InvalidArgumentError: the reply cannot travel (its JSON is too big).
    """
    client = _get()
    item, message = client.current, client.message
    if item is None or message is None:
        raise FlareError(
            "send_reply() called without a message: call flare.receive_message() first"
        )
    if isinstance(reply, RecordSet):
        reply = message.create_reply(reply)
    elif isinstance(reply, Error):
        reply = message.create_error_reply(reply)
    elif not isinstance(reply, Message):
        raise FlareError(
            f"send_reply() takes a Message, a RecordSet or an Error, got {type(reply).__name__}"
        )
    if item["op"] == "task":
        _answer_task(client, item, reply)
        client.message = None
        return
    data, arrays = to_wire(reply)
    npz = npz_of(arrays)
    if npz is not None:
        Path(item["reply_path"]).write_bytes(npz)
    answer = client.request(
        {"op": "reply", "message_id": item["task_id"], "message": data, "npz": npz is not None}
    )
    if answer["op"] != "ok":
        raise FlareError(f"the site refused the reply: {answer.get('message', answer)}")
    client.current = None
    client.message = None


def _answer_task(client: _Client, task: dict[str, Any], reply: Message) -> None:
    """A reply to a task-as-message, sent as the task's result (see send_reply)."""
    if reply.has_error():
        answer = client.request(
            {
                "op": "result",
                "task_id": task["task_id"],
                "error": f"{reply.error.code}: {reply.error.reason or ''}",
            }
        )
        if answer["op"] != "ok":
            raise FlareError(f"the site refused the result: {answer.get('message', answer)}")
        client.current = None
        return
    content = reply.content
    metrics: dict[str, float] = {}
    num: object = None
    for metrics_record in content.metrics_records.values():
        for key, value in metrics_record.items():
            if key in ("num-examples", "num_examples"):
                num = value
            elif isinstance(value, (int, float)):
                metrics[key] = float(value)
    if task["kind"] != "train":
        send(FLModel(metrics=metrics))
        return
    records = content.parameters_records
    record = records.get("arrays") or (next(iter(records.values())) if len(records) == 1 else None)
    if record is None:
        raise FlareError(
            "a training reply needs its update as one ParametersRecord (named 'arrays' when "
            f"the reply holds several); it holds {sorted(records)}"
        )
    params_type = "FULL"
    for configs in content.configs_records.values():
        params_type = str(configs.get("params-type", configs.get("params_type", params_type)))
    if isinstance(num, bool) or not isinstance(num, int):
        raise FlareError(
            "a training reply needs its number of examples as an integer in a MetricsRecord "
            f"under 'num-examples' (the FedAvg weight), got {num!r}"
        )
    send(
        FLModel(
            params=dict(record),
            params_type=params_type,
            metrics=metrics,
            meta={"num_examples": num},
        )
    )


def is_train() -> bool:
    """True when the last received task asks for training."""
    return _get().last_kind == "train"


def is_evaluate() -> bool:
    """True when the last received task asks to validate the global model."""
    return _get().last_kind == "validate"


def get_site_name() -> str:
    """The name of the site running this script."""
    return _get().site


def get_job_id() -> str:
    """The id of the job this script runs in."""
    return _get().job_id


def shutdown() -> None:
    """Close the connection to the site (optional: exiting closes it too)."""
    global _client
    if _client is not None:
        _client.close()
        _client = None
