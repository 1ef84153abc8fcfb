"""A TensorBoard-style writer whose scalars stream to the server's metrics log."""

from __future__ import annotations

from collections.abc import Mapping

from flare_site.client import _api

__all__ = ["SummaryWriter"]


class SummaryWriter:
    """``add_scalar``/``add_scalars`` like ``torch.utils.tensorboard.SummaryWriter``.

    Each scalar becomes a metrics row (site, round, key, value, step, time) on the server.
    ``flare.init()`` is called on first use.
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        # Accepts and ignores log_dir and friends so TensorBoard code runs unchanged.
        _api.init()

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        """Record ``scalar_value`` under ``tag``."""
        _api.log_metric(tag, float(scalar_value), global_step)

    def add_scalars(
        self, main_tag: str, tag_scalar_dict: Mapping[str, float], global_step: int | None = None
    ) -> None:
        """Record several scalars as ``main_tag/tag``."""
        for tag, value in tag_scalar_dict.items():
            _api.log_metric(f"{main_tag}/{tag}", float(value), global_step)

    def flush(self) -> None:
        """Nothing to do: every scalar is sent at once."""

    def close(self) -> None:
        """Nothing to do: kept for TensorBoard compatibility."""

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
