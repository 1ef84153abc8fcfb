"""A mock numpy training script using the Client API (sends FULL weights each round).

Every site moves the weights by its own amount and reports a different number of
examples, so the FedAvg result has a closed form: with sites site-1 and site-2, each round
adds (1*10 + 2*20) / 30 = 5/3 to every weight.
"""

import re

import numpy as np

import flare_site.client as flare


def site_index(name: str) -> int:
    """1 for site-1, 2 for site-2 ... (1 for a name without a number)."""
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else 1


def train(weights: np.ndarray, step: float) -> np.ndarray:
    # mock training: add the site's step to every weight
    return weights + np.asarray(step, dtype=weights.dtype)


def evaluate(weights: np.ndarray) -> float:
    # mock evaluation: the mean weight
    return float(np.mean(weights))


def main() -> None:
    flare.init()
    index = site_index(flare.get_site_name())
    writer = flare.SummaryWriter()
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        weights = input_model.params["numpy_key"]
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"mean_weight": evaluate(weights)}))
            continue
        new_weights = train(weights, float(index))
        writer.add_scalar("mean_weight", evaluate(new_weights), input_model.current_round)
        flare.send(
            flare.FLModel(
                params={"numpy_key": new_weights},
                params_type="FULL",
                metrics={"mean_weight": evaluate(new_weights)},
                meta={"num_examples": 10 * index},
            )
        )


if __name__ == "__main__":
    main()
