"""The model, and the `build` entry point: the seed model.

Weights are a list of numpy arrays saved as Scaleout's numpyhelper saves them: a
compressed .npz whose members are named "0", "1", ... in order.

    cd examples/scaleout-numpy
    flare job run build --path app --output app/seed.npz
"""

import numpy as np


def load_parameters(path):
    with np.load(path) as archive:
        return [archive[str(i)] for i in range(len(archive.files))]


def save_parameters(weights, path):
    np.savez_compressed(path, **{str(i): w for i, w in enumerate(weights)})


def init_seed(out_path="seed.npz"):
    save_parameters([np.zeros(4), np.zeros(1)], out_path)


if __name__ == "__main__":
    init_seed("../seed.npz")
