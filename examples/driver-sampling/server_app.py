"""driver-sampling: each round trains a random subset of the sites, each with its own
config, and every second round evaluates the global model on every site.

    flare driver run server_app:app --kit <admin kit> --job .      (from this folder)

What the built-in workflows cannot do: the driver picks the sites of each round (a seeded
sample of ``fraction-train`` of them, at least ``min-train-nodes``), gives each picked
site a different learning rate and number of local epochs, aggregates the replies it got
(a site that fails or is gone is left out of that round), and every ``evaluate-every``
rounds asks every site for the global model's error on its held-out data.
"""

from __future__ import annotations

import random

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

app = ServerApp()


@app.main()
def main(driver: Driver, context: Context) -> None:
    config = context.run_config
    rng = random.Random(config.get("seed", 0))
    rates = config.get("learning-rates", [0.05])
    arrays = ParametersRecord({"w": np.zeros(4), "b": np.zeros(())})
    for rnd in range(1, int(config.get("num-server-rounds", 4)) + 1):
        nodes = sorted(driver.get_node_ids())
        count = max(
            int(config.get("min-train-nodes", 2)), round(config["fraction-train"] * len(nodes))
        )
        picked = rng.sample(nodes, min(count, len(nodes)))
        messages = []
        for i, node in enumerate(picked):  # each picked site gets its own config
            train = ConfigsRecord(
                {"server-round": rnd, "lr": rates[i % len(rates)], "local-epochs": 2 + i}
            )
            content = RecordSet({"arrays": arrays, "config": train})
            messages.append(
                driver.create_message(content, MessageType.TRAIN, node, group_id=str(rnd))
            )
        replies = [r for r in driver.send_and_receive(messages) if r.has_content()]
        if not replies:
            raise RuntimeError(f"round {rnd}: no site sent an update")
        arrays = weighted_mean(replies)
        names = ", ".join(driver.node_names[r.metadata.src_node_id] for r in replies)
        print(f"round {rnd}: trained on {names}", flush=True)
        if rnd % int(config.get("evaluate-every", 2)) == 0:
            content = RecordSet({"arrays": arrays, "config": ConfigsRecord({"server-round": rnd})})
            asks = [
                driver.create_message(content, MessageType.EVALUATE, n, group_id=str(rnd))
                for n in nodes
            ]
            results = [
                r.content.metrics_records["metrics"]
                for r in driver.send_and_receive(asks)
                if r.has_content()
            ]
            total = sum(m["num-examples"] for m in results)
            loss = sum(m["mse"] * m["num-examples"] for m in results) / max(total, 1)
            print(f"round {rnd}: evaluated on {len(results)} sites, mse {loss:.4f}", flush=True)
    driver.finish(model=dict(arrays))


def weighted_mean(replies: list[Message]) -> ParametersRecord:
    """FedAvg of the replies' arrays, weighted by their num-examples."""
    weights = [r.content.metrics_records["metrics"]["num-examples"] for r in replies]
    updates = [r.content.parameters_records["arrays"] for r in replies]
    mean = {
        name: (
            sum(n * np.asarray(u[name], np.float64) for u, n in zip(updates, weights, strict=True))
            / sum(weights)
        ).astype(first.dtype)
        for name, first in updates[0].items()
    }
    return ParametersRecord(mean)
