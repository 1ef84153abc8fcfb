"""The Client API for training scripts: ``import flare_site.client as flare``.

::

    import flare_site.client as flare

    flare.init()
    while flare.is_running():
        model = flare.receive()
        weights = train(model.params)
        flare.log_metric("loss", loss, step)
        flare.send(flare.FLModel(params=weights, params_type="FULL",
                                 metrics={"accuracy": acc}, meta={"num_examples": n}))

Metric writers with TensorBoard's, Weights & Biases' and MLflow's call shapes
(``SummaryWriter``, ``WandBWriter``, ``MLflowWriter``) stream over the same channel.

In a driver job (docs/driver.md) the script gets Driver API messages instead of tasks,
Flower's ``Message`` with a ``RecordSet``: ``flare.receive_message()`` /
``flare.send_reply(content | error)``, or a Flower-style :class:`ClientApp` whose
``@app.train()``, ``@app.evaluate()`` and ``@app.query()`` handlers ``app.run()`` calls.

The script runs in a subprocess of the site; it talks to the site over a local socket
(JSON frames, models as ``.npz`` files, never pickle).
"""

from __future__ import annotations

from flare_protocol.message import Error, ErrorCode, Message, MessageType, Metadata
from flare_protocol.records import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigsRecord,
    Context,
    MetricRecord,
    MetricsRecord,
    ParametersRecord,
    RecordDict,
    RecordSet,
)
from flare_site.client._api import (
    get_job_id,
    get_site_name,
    init,
    is_evaluate,
    is_running,
    is_train,
    log_metric,
    receive,
    receive_message,
    send,
    send_reply,
    shutdown,
)
from flare_site.client._model import FLModel, ParamsType
from flare_site.client.app import ClientApp
from flare_site.client.tracking import MLflowWriter, SummaryWriter, WandBWriter

__all__ = [
    "Array",
    "ArrayRecord",
    "ClientApp",
    "ConfigRecord",
    "ConfigsRecord",
    "Context",
    "Error",
    "ErrorCode",
    "FLModel",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "MetricsRecord",
    "ParametersRecord",
    "RecordDict",
    "RecordSet",
    "MLflowWriter",
    "ParamsType",
    "SummaryWriter",
    "WandBWriter",
    "get_job_id",
    "get_site_name",
    "init",
    "is_evaluate",
    "is_running",
    "is_train",
    "log_metric",
    "receive",
    "receive_message",
    "send",
    "send_reply",
    "shutdown",
]
