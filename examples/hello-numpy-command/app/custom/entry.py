"""hello-numpy with Scaleout-style entry points (the command executor).

    python entry.py startup                                  once per job: make the data
    python entry.py train MODEL_IN MODEL_OUT METADATA_OUT    one round of local training
    python entry.py validate MODEL_IN METRICS_OUT            evaluate the global model

Each call is its own process; the site passes file paths and reads the results: the
update .npz, a metadata JSON with the mandatory num_examples, a metrics JSON.
Models are plain .npz files (numpy.savez works too). Try it without a server:

    flare job run startup --path examples/hello-numpy-command/app
    flare job run train --path examples/hello-numpy-command/app --output /tmp/update.npz
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

import numpy as np

TRUE_W = np.array([1.5, -2.0, 0.5, 3.0])
TRUE_B = 0.7
# The job's workspace on the site (the app folder stays as submitted).
DATA = Path(os.environ.get("FLARE_JOB_WORKSPACE", ".")) / "data"


def site_name() -> str:
    return os.environ.get("FLARE_SITE_NAME", "local")


def startup() -> None:
    site = site_name()
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    n = 150 + zlib.crc32(site.encode()) % 100
    x = rng.normal(size=(n + 50, 4))
    y = x @ TRUE_W + TRUE_B + rng.normal(scale=0.1, size=n + 50)
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez(DATA / f"{site}.npz", x_train=x[:n], y_train=y[:n], x_val=x[n:], y_val=y[n:])
    print(f"{site}: wrote {n} training and 50 validation examples", flush=True)


def load_data() -> dict[str, np.ndarray]:
    path = DATA / f"{site_name()}.npz"
    if not path.exists():
        startup()
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_model(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as model:
        params = {k: model[k] for k in model.files}
    return params or {"w": np.zeros(4), "b": np.zeros(())}


def mse(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ params["w"] + params["b"] - y) ** 2))


def train(model_in: str, model_out: str, metadata_out: str) -> None:
    data = load_data()
    x, y = data["x_train"], data["y_train"]
    params = load_model(model_in)
    w, b = params["w"].astype(np.float64), float(params["b"])
    lr, epochs = float(os.environ.get("LEARNING_RATE", "0.05")), int(os.environ.get("EPOCHS", "5"))
    for _ in range(epochs):
        err = x @ w + b - y
        w = w - lr * 2 * x.T @ err / len(y)
        b = b - lr * 2 * float(err.mean())
    new = {"w": w, "b": np.asarray(b)}
    with open(model_out, "wb") as handle:
        np.savez(handle, **new)
    metadata = {"num_examples": int(len(y)), "metrics": {"train_mse": mse(new, x, y)}}
    Path(metadata_out).write_text(json.dumps(metadata))


def validate(model_in: str, metrics_out: str) -> None:
    data = load_data()
    params = load_model(model_in)
    metrics = {"val_mse": mse(params, data["x_val"], data["y_val"])}
    Path(metrics_out).write_text(json.dumps(metrics))


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    {"startup": startup, "train": train, "validate": validate}[command](*paths)
