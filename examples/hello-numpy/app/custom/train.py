"""hello-numpy: federated linear regression with the Client API (numpy only).

Each site makes its own private data, seeded from its site name, so runs are
deterministic: y = X @ [1.5, -2.0, 0.5, 3.0] + 0.7 + noise. Every round the site starts
from the global model, runs full-batch gradient descent, streams its training loss, and
sends the new weights with its number of examples. Validation tasks report the global
model's mean squared error on the site's held-out data.

Try it without a server:
    flare job run train --path examples/hello-numpy/app \
        --input examples/hello-numpy/app/models/initial_model.npz --output /tmp/update.npz
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np

import flare_site.client as flare

TRUE_W = np.array([1.5, -2.0, 0.5, 3.0])
TRUE_B = 0.7


def site_data(site: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic private data for ``site``: (X_train, y_train, X_val, y_val)."""
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    n = 150 + zlib.crc32(site.encode()) % 100  # sites hold different amounts of data
    x = rng.normal(size=(n + 50, 4))
    y = x @ TRUE_W + TRUE_B + rng.normal(scale=0.1, size=n + 50)
    return x[:n], y[:n], x[n:], y[n:]


def mse(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ params["w"] + params["b"] - y) ** 2))


def train(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    first_step: int,
) -> dict[str, np.ndarray]:
    w, b = params["w"].astype(np.float64).copy(), float(params["b"])
    for epoch in range(epochs):
        err = x @ w + b - y
        w -= lr * 2 * x.T @ err / len(y)
        b -= lr * 2 * float(err.mean())
        flare.log_metric("train_loss", float(np.mean(err**2)), step=first_step + epoch)
    return {"w": w.astype(params["w"].dtype), "b": np.asarray(b, dtype=params["b"].dtype)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--send-diff", action="store_true", help="send weight changes (DIFF)")
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    x_train, y_train, x_val, y_val = site_data(site)
    print(f"{site}: {len(y_train)} training and {len(y_val)} validation examples", flush=True)

    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        params = model.params or {"w": np.zeros(4), "b": np.zeros(())}
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"val_mse": mse(params, x_val, y_val)}))
            continue
        first_step = (model.current_round - 1) * args.epochs
        new = train(params, x_train, y_train, args.epochs, args.lr, first_step)
        metrics = {"train_mse": mse(new, x_train, y_train), "val_mse": mse(new, x_val, y_val)}
        if args.send_diff and model.params:
            update = {k: new[k] - params[k] for k in new}
            flare.send(
                flare.FLModel(
                    params=update,
                    params_type="DIFF",
                    metrics=metrics,
                    meta={"num_examples": len(y_train)},
                )
            )
        else:
            flare.send(
                flare.FLModel(
                    params=new,
                    params_type="FULL",
                    metrics=metrics,
                    meta={"num_examples": len(y_train)},
                )
            )


if __name__ == "__main__":
    main()
