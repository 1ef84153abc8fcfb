"""Experiment-tracking writers whose records stream to the server, as NVIDIA FLARE's do.

Three call shapes over one channel (``flare.log_metric``'s): TensorBoard's
:class:`SummaryWriter`, Weights & Biases' :class:`WandBWriter` and MLflow's
:class:`MLflowWriter`. Numbers become rows of the job's metrics log (``get_job_metrics``);
MLflow's params, tags and texts, and strings given to ``WandBWriter.log``, become rows of
its params log (``get_job_params``), with their kind. Each writer calls ``flare.init()`` on
creation; the round of every record is the task the script is working on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flare_protocol.errors import FlareError
from flare_site.client import _api

__all__ = ["MLflowWriter", "SummaryWriter", "WandBWriter"]


def _number(key: str, value: Any) -> float:
    """A number, a numpy scalar or a one-element tensor, as a float."""
    if not isinstance(value, (bool, str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise FlareError(
        f"metric {key!r} must be a number, got {type(value).__name__} (images, tables and "
        "histograms are not recorded)"
    )


class SummaryWriter:
    """``add_scalar``/``add_scalars`` like ``torch.utils.tensorboard.SummaryWriter``.

    Each scalar becomes a metrics row (site, round, key, value, step, time) on the server.
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        # Accepts and ignores log_dir and friends so TensorBoard code runs unchanged.
        _api.init()

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        """Record ``scalar_value`` under ``tag``."""
        _api.log_metric(tag, _number(tag, scalar_value), global_step)

    def add_scalars(
        self, main_tag: str, tag_scalar_dict: Mapping[str, float], global_step: int | None = None
    ) -> None:
        """Record several scalars as ``main_tag/tag``."""
        for tag, value in tag_scalar_dict.items():
            key = f"{main_tag}/{tag}"
            _api.log_metric(key, _number(key, value), global_step)

    def flush(self) -> None:
        """Nothing to do: every scalar is sent at once."""

    def close(self) -> None:
        """Nothing to do: kept for TensorBoard compatibility."""

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class WandBWriter:
    """``log(dict, step)`` like ``wandb.log``.

    Numbers become metrics; strings become ``text`` records; a nested dict is logged
    under ``outer/inner`` keys. Anything else (images, tables, histograms) is refused
    with a :class:`FlareError` naming the key.
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        # wandb.init's project, name, config ... are accepted and ignored.
        _api.init()

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record every entry of ``metrics`` at ``step`` (None: no step)."""
        for key, value in _flatten(metrics):
            if isinstance(value, str):
                _api.log_record("text", key, value, step)
            else:
                _api.log_metric(key, _number(key, value), step)


class MLflowWriter:
    """MLflow's tracking calls: metrics, params, tags and texts of this site's run.

    ``log_metric(s)`` feed the metrics log; ``log_param(s)``, ``set_tag(s)`` and
    ``log_text`` feed the params log (values turned into strings, as MLflow does).
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        # A tracking URI, an experiment or a run name are the server's business here.
        _api.init()

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Record one metric."""
        _api.log_metric(key, _number(key, value), step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record several metrics at one step."""
        for key, value in metrics.items():
            self.log_metric(key, value, step)

    def log_param(self, key: str, value: Any) -> None:
        """Record a parameter (its ``str()``)."""
        _api.log_record("param", key, str(value))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record several parameters."""
        for key, value in params.items():
            self.log_param(key, value)

    def set_tag(self, key: str, value: Any) -> None:
        """Record a tag (its ``str()``)."""
        _api.log_record("tag", key, str(value))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Record several tags."""
        for key, value in tags.items():
            self.set_tag(key, value)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Record a text under the name ``artifact_file`` (MLflow saves it as that file)."""
        _api.log_record("text", artifact_file, text)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flatten(value, f"{name}/"))
        else:
            out.append((name, value))
    return out
