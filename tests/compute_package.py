"""A Scaleout-style numpy compute package for tests, and the small wheel its python_env needs.

The package is written as Scaleout's examples are (``scaleout.yaml`` with ``build``,
``startup``, ``train``, ``validate`` and ``predict``; ``python_env.yaml``; ``.ignore``), and
its code uses Scaleout's helper API: ``get_helper("numpyhelper")``, ``save_metadata``,
``save_metrics``. That API comes from :func:`build_helpers_wheel`, a wheel made here (no
index, no build backend) named ``fedn`` like the package that provides it, so the
package's ``python_env`` installs it with ``pip --no-index --find-links DIR``, and its code
can import it only from the virtualenv (the sites' own Python does not have it).

The model is linear regression, ``y = x @ w + b``, trained by one gradient step per round
(:func:`local_step`), so a test can compute the FedAvg result from the data files the
``startup`` entry point wrote on each site.
"""

from __future__ import annotations

import base64
import hashlib
import textwrap
import zipfile
from pathlib import Path

import numpy as np

LEARNING_RATE = 0.1
WHEEL_NAME = "fedn"
WHEEL_VERSION = "0.0.1"

HELPERS = {
    "fedn/__init__.py": "",
    "fedn/utils/__init__.py": "",
    "fedn/utils/helpers/__init__.py": "",
    "fedn/utils/helpers/helpers.py": textwrap.dedent(
        '''
        """Stand-in for Scaleout's helper functions (same names and file conventions)."""
        import importlib
        import json


        def get_helper(name):
            return importlib.import_module(f"fedn.utils.helpers.plugins.{name}").Helper()


        def save_metadata(metadata, filename):
            with open(str(filename) + "-metadata", "w") as fh:
                json.dump(metadata, fh)


        def load_metadata(filename):
            with open(str(filename) + "-metadata") as fh:
                return json.load(fh)


        def save_metrics(metrics, filename):
            with open(filename, "w") as fh:
                json.dump(metrics, fh)
        '''
    ),
    "fedn/utils/helpers/plugins/__init__.py": "",
    "fedn/utils/helpers/plugins/numpyhelper.py": textwrap.dedent(
        '''
        """Stand-in for Scaleout's numpyhelper: a list of arrays as a compressed .npz whose
        members are named "0", "1", ... in order."""
        import numpy as np


        class Helper:
            def save(self, weights, path):
                np.savez_compressed(path, **{str(i): w for i, w in enumerate(weights)})
                return path

            def load(self, path):
                with np.load(path) as archive:
                    return [archive[str(i)] for i in range(len(archive.files))]
        '''
    ),
}

SCALEOUT_YAML = """\
python_env: python_env.yaml

entry_points:
  build:
    command: python model.py
  startup:
    command: python data.py
  train:
    command: python train.py
  validate:
    command: python validate.py
  predict:
    command: python predict.py
"""

PYTHON_ENV_YAML = """\
name: .numpy-linear
build_dependencies:
  - pip
dependencies:
  - {dependency}
"""

IGNORE = """\
# what `flare job pack` and submit_job leave out
data
__pycache__
*.tgz
notes/
"""

MODEL_PY = """\
import numpy as np

from fedn.utils.helpers.helpers import get_helper

helper = get_helper("numpyhelper")


def load_parameters(path):
    w, b = helper.load(path)
    return w, b


def save_parameters(w, b, path):
    helper.save([w, b], path)


def init_seed(out_path="seed.npz"):
    save_parameters(np.linspace(-1.0, 1.0, 4), np.array([0.5]), out_path)


if __name__ == "__main__":
    init_seed("../seed.npz")
"""

DATA_PY = """\
import os
import zlib

import numpy as np

TRUE_W = np.array([1.5, -2.0, 0.5, 3.0])


def make_split(site):
    seed = zlib.crc32(site.encode())
    rng = np.random.default_rng(seed)
    n = 40 + seed % 50
    x = rng.normal(size=(n + 20, 4))
    y = x @ TRUE_W + 0.7 + rng.normal(scale=0.1, size=n + 20)
    os.makedirs("data", exist_ok=True)
    np.savez("data/split.npz", x_train=x[:n], y_train=y[:n], x_val=x[n:], y_val=y[n:])


def load_data(is_train=True):
    with np.load("data/split.npz") as data:
        if is_train:
            return data["x_train"], data["y_train"]
        return data["x_val"], data["y_val"]


if __name__ == "__main__":
    make_split(os.environ.get("FLARE_SITE_NAME", "local"))
"""

TRAIN_PY = """\
import sys

from data import load_data
from model import load_parameters, save_parameters

from fedn.utils.helpers.helpers import save_metadata


def train(in_model_path, out_model_path, lr=0.1):
    x, y = load_data()
    w, b = load_parameters(in_model_path)
    err = x @ w + b - y
    w = w - lr * (x.T @ err) / len(y)
    b = b - lr * err.mean()
    save_metadata({"num_examples": len(y), "lr": lr}, out_model_path)
    save_parameters(w, b, out_model_path)


if __name__ == "__main__":
    train(sys.argv[1], sys.argv[2])
"""

VALIDATE_PY = """\
import sys

from data import load_data
from model import load_parameters

from fedn.utils.helpers.helpers import save_metrics


def validate(in_model_path, out_json_path):
    x, y = load_data(is_train=False)
    w, b = load_parameters(in_model_path)
    save_metrics({"val_mse": float(((x @ w + b - y) ** 2).mean())}, out_json_path)


if __name__ == "__main__":
    validate(sys.argv[1], sys.argv[2])
"""

PREDICT_PY = """\
import sys

print("predict is not run by flare sites", sys.argv[1:])
"""


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def build_helpers_wheel(folder: Path) -> Path:
    """Write ``fedn-0.0.1-py3-none-any.whl`` (the helper API above) into ``folder``."""
    dist_info = f"{WHEEL_NAME}-{WHEEL_VERSION}.dist-info"
    files = {name: text.encode() for name, text in HELPERS.items()}
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {WHEEL_NAME}\nVersion: {WHEEL_VERSION}\n"
        "Summary: flare-admin tests' stand-in for Scaleout's helper API\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: flare-admin-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{WHEEL_NAME}-{WHEEL_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def write_package(app: Path, *, dependency: str = WHEEL_NAME, python_env: bool = True) -> Path:
    """Write the compute package into ``app`` (created); ``dependency``: python_env's one."""
    app.mkdir(parents=True, exist_ok=True)
    yaml_text = SCALEOUT_YAML if python_env else SCALEOUT_YAML.split("\n", 2)[2]
    files = {
        "scaleout.yaml": yaml_text,
        ".ignore": IGNORE,
        "model.py": MODEL_PY,
        "data.py": DATA_PY,
        "train.py": TRAIN_PY,
        "validate.py": VALIDATE_PY,
        "predict.py": PREDICT_PY,
    }
    if python_env:
        files["python_env.yaml"] = PYTHON_ENV_YAML.format(dependency=dependency)
    for name, text in files.items():
        (app / name).write_text(text)
    return app


def local_step(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float = LEARNING_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """What ``train.py`` does to the model on one site's data."""
    err = x @ w + b - y
    return w - lr * (x.T @ err) / len(y), b - lr * err.mean()
