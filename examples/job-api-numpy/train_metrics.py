"""train_full.py plus experiment tracking: MLflow's and Weights & Biases' call shapes.

Numbers go to the job's metrics (``Session.get_job_metrics``); params, tags and texts to
its params log (``Session.get_job_params``); ``Session.export_metrics`` turns both into
TensorBoard event files or MLflow runs.
"""

import numpy as np
from train_full import evaluate, site_index, train

import flare_site.client as flare


def main() -> None:
    flare.init()
    site = flare.get_site_name()
    index = site_index(site)
    mlflow = flare.MLflowWriter()
    wandb = flare.WandBWriter()
    mlflow.log_params({"step_size": index, "optimizer": "mock"})
    mlflow.set_tags({"site": site, "example": "job-api-numpy"})
    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        weights = input_model.params["numpy_key"]
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"mean_weight": evaluate(weights)}))
            continue
        r = input_model.current_round
        new_weights = train(weights, float(index))
        mlflow.log_metric("mean_weight", evaluate(new_weights), step=r)
        mlflow.log_metrics({"max_weight": float(np.max(new_weights))}, step=r)
        wandb.log(
            {"loss": 1.0 / r, "phase": "train", "weights": {"min": float(np.min(new_weights))}},
            step=r,
        )
        mlflow.log_text(f"round {r}: mean {evaluate(new_weights):.3f}", f"notes/round_{r}.txt")
        flare.send(
            flare.FLModel(
                params={"numpy_key": new_weights},
                params_type="FULL",
                meta={"num_examples": 10 * index},
            )
        )


if __name__ == "__main__":
    main()
