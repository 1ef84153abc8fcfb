"""driver-fedavg: FedAvg written as a driver, the same rounds the built-in "fedavg" runs.

    flare driver run server_app:app --kit <admin kit> --job .      (from this folder)

Each round sends the global model to every site, waits for their replies (pushed by the
server as they arrive), and takes the mean of the updates weighted by each site's
``num-examples``, in float64, as the built-in workflow does. The job's final global model
is the last round's, which ``download_model`` serves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flare_admin import (
    ConfigsRecord,
    Context,
    Driver,
    Message,
    MessageType,
    ParametersRecord,
    RecordSet,
    ServerApp,
)
from flare_protocol.models import load_params

app = ServerApp()
INITIAL_MODEL = Path(__file__).parent / "app" / "models" / "initial_model.npz"


@app.main()
def main(driver: Driver, context: Context) -> None:
    config = context.run_config
    rounds = int(config.get("num-server-rounds", 3))
    arrays = ParametersRecord(load_params(INITIAL_MODEL))
    for rnd in range(1, rounds + 1):
        train = ConfigsRecord(
            {
                "server-round": rnd,
                "lr": config.get("lr", 0.05),
                "local-epochs": config.get("local-epochs", 5),
            }
        )
        content = RecordSet({"arrays": arrays, "config": train})
        nodes = driver.get_node_ids()
        messages = [
            driver.create_message(content, MessageType.TRAIN, node, group_id=str(rnd))
            for node in nodes
        ]
        replies = driver.send_and_receive(messages)
        failed = [r.error.reason for r in replies if r.has_error()]
        if failed:  # as the built-in workflow does with every site required
            raise RuntimeError(f"round {rnd}: {len(failed)} site(s) failed: {failed}")
        arrays = weighted_mean(replies)
        print(f"round {rnd}: aggregated the updates of {len(replies)} sites", flush=True)
    driver.finish(model=dict(arrays))


def weighted_mean(replies: list[Message]) -> ParametersRecord:
    """FedAvg: the updates' mean weighted by num-examples, summed in float64."""
    weights = [r.content.metrics_records["metrics"]["num-examples"] for r in replies]
    updates = [r.content.parameters_records["arrays"] for r in replies]
    total = float(sum(weights))
    mean = {}
    for name, first in updates[0].items():
        acc = np.zeros(first.shape, np.float64)
        for update, n in zip(updates, weights, strict=True):
            acc += n * np.asarray(update[name], np.float64)
        mean[name] = (acc / total).astype(first.dtype)
    return ParametersRecord(mean)
