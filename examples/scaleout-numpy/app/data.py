"""The `startup` entry point: this site's share of a linear-regression data set.

Written to data/ in the package folder, as Scaleout's examples do (.ignore keeps it out of
the job when you run startup locally).
"""

import os
import zlib

import numpy as np

TRUE_W = np.array([1.5, -2.0, 0.5, 3.0])
TRUE_B = 0.7


def make_split(site):
    seed = zlib.crc32(site.encode())
    rng = np.random.default_rng(seed)
    n = 150 + seed % 100
    x = rng.normal(size=(n + 50, 4))
    y = x @ TRUE_W + TRUE_B + rng.normal(scale=0.1, size=n + 50)
    os.makedirs("data", exist_ok=True)
    np.savez("data/split.npz", x_train=x[:n], y_train=y[:n], x_val=x[n:], y_val=y[n:])
    print(f"{site}: wrote {n} training and 50 validation examples")


def load_data(is_train=True):
    if not os.path.exists("data/split.npz"):
        make_split(os.environ.get("FLARE_SITE_NAME", "local"))
    with np.load("data/split.npz") as data:
        if is_train:
            return data["x_train"], data["y_train"]
        return data["x_val"], data["y_val"]


if __name__ == "__main__":
    make_split(os.environ.get("FLARE_SITE_NAME", "local"))
