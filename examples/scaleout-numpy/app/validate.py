"""The `validate` entry point: python validate.py MODEL_IN VALIDATIONS_JSON."""

import json
import sys

from data import load_data
from model import load_parameters


def validate(in_model_path, out_json_path):
    x, y = load_data(is_train=False)
    w, b = load_parameters(in_model_path)
    with open(out_json_path, "w") as fh:
        json.dump({"val_mse": float(((x @ w + b - y) ** 2).mean())}, fh)


if __name__ == "__main__":
    validate(sys.argv[1], sys.argv[2])
