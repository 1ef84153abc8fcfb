"""The `train` entry point: python train.py MODEL_IN MODEL_OUT.

Writes the update to MODEL_OUT and the metadata (num_examples is mandatory) to
MODEL_OUT-metadata, where Scaleout's save_metadata(metadata, MODEL_OUT) writes it.
"""

import json
import sys

from data import load_data
from model import load_parameters, save_parameters


def train(in_model_path, out_model_path, lr=0.05, epochs=5):
    x, y = load_data()
    w, b = load_parameters(in_model_path)
    for _ in range(epochs):
        err = x @ w + b - y
        w = w - lr * 2 * x.T @ err / len(y)
        b = b - lr * 2 * err.mean()
    with open(out_model_path + "-metadata", "w") as fh:
        json.dump({"num_examples": len(y), "lr": lr, "epochs": epochs}, fh)
    save_parameters([w, b], out_model_path)


if __name__ == "__main__":
    train(sys.argv[1], sys.argv[2])
