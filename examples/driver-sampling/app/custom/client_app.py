"""The sites' side of driver-sampling (driver-fedavg's): a Flower-style ClientApp.

Each site makes its own private data, seeded from its site name, so runs are
deterministic: y = X @ [1.5, -2.0, 0.5, 3.0] + 0.7 + noise. A ``train`` message carries
the global model (ParametersRecord "arrays") and a config (ConfigsRecord "config":
``lr``, ``local-epochs``); the reply carries the new weights and, in MetricsRecord
"metrics", ``num-examples`` (the FedAvg weight) and the config it trained with. An
``evaluate`` message gets the model's mean squared error on the site's held-out data.

The same script serves a job of the built-in ``fedavg`` workflow: its tasks arrive as
``train``/``evaluate`` messages too (docs/driver.md).
"""

from __future__ import annotations

import zlib

import numpy as np

import flare_site.client as flare
from flare_site.client import (
    ClientApp,
    Context,
    Message,
    MetricsRecord,
    ParametersRecord,
    RecordSet,
)

TRUE_W = np.array([1.5, -2.0, 0.5, 3.0])
TRUE_B = 0.7

app = ClientApp()


def site_data(site: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic private data for ``site``: (X_train, y_train, X_val, y_val)."""
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    n = 150 + zlib.crc32(site.encode()) % 100  # sites hold different amounts of data
    x = rng.normal(size=(n + 50, 4))
    y = x @ TRUE_W + TRUE_B + rng.normal(scale=0.1, size=n + 50)
    return x[:n], y[:n], x[n:], y[n:]


def mse(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w + b - y) ** 2))


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content.parameters_records["arrays"]
    config = msg.content.configs_records["config"]
    lr, epochs = float(config.get("lr", 0.05)), int(config.get("local-epochs", 5))
    x, y, _, _ = site_data(context.node_config["site-name"])
    w, b = arrays["w"].astype(np.float64), float(arrays["b"])
    for step in range(epochs):  # full-batch gradient descent
        err = x @ w + b - y
        w = w - lr * 2 * x.T @ err / len(y)
        b = b - lr * 2 * float(err.mean())
        flare.log_metric("train_mse", float(np.mean(err**2)), step=step)
    weights = {"w": w.astype(arrays["w"].dtype), "b": np.asarray(b, arrays["b"].dtype)}
    metrics = {"num-examples": len(y), "train-mse": mse(w, b, x, y), "lr": lr, "epochs": epochs}
    content = RecordSet({"arrays": ParametersRecord(weights), "metrics": MetricsRecord(metrics)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    arrays = msg.content.parameters_records["arrays"]
    _, _, x, y = site_data(context.node_config["site-name"])
    metrics = {"num-examples": len(y), "mse": mse(arrays["w"], arrays["b"], x, y)}
    return Message(RecordSet({"metrics": MetricsRecord(metrics)}), reply_to=msg)


if __name__ == "__main__":
    app.run()
