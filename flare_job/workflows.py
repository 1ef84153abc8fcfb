"""What runs on the server: a built-in workflow (FedAvg or FedOpt) and its initial model.

These are descriptions, not code that runs: each turns into the app's
``config/config_fed_server.json`` (docs/jobs.md) and, for :class:`InitialModel`, an
``.npz`` written with :func:`flare_protocol.models.save_params` (never pickle).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flare_protocol.errors import InvalidArgumentError
from flare_protocol.models import check_params, save_params

__all__ = ["FedAvg", "FedOpt", "InitialModel", "Workflow"]

#: Where an exported job keeps its initial model, inside the server's app.
INITIAL_MODEL = "models/initial_model.npz"


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{what} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class Workflow:
    """The server's workflow; see :class:`FedAvg` and :class:`FedOpt`.

    Attributes:
        num_rounds: training rounds.
        min_responses: fewest updates a round may be aggregated from (None: every site
            the job starts with).
        round_timeout: seconds a round waits before it goes on with the answers it has
            (None: the server's default, 600).
        validate_every_round: after each round every site validates the new global model.
    """

    num_rounds: int = 1
    min_responses: int | None = None
    round_timeout: float | None = None
    validate_every_round: bool = False

    def __post_init__(self) -> None:
        _positive_int(self.num_rounds, "num_rounds")
        if self.min_responses is not None:
            _positive_int(self.min_responses, "min_responses")
        if self.round_timeout is not None and not (
            isinstance(self.round_timeout, (int, float)) and self.round_timeout > 0
        ):
            raise InvalidArgumentError(
                f"round_timeout must be a number of seconds > 0, got {self.round_timeout!r}"
            )

    @property
    def name(self) -> str:
        """The ``workflow`` value of the server config."""
        raise NotImplementedError

    def server_config(self) -> dict[str, Any]:
        """The ``config_fed_server.json`` object (without ``initial_model``)."""
        config: dict[str, Any] = {"workflow": self.name, "num_rounds": self.num_rounds}
        if self.min_responses is not None:
            config["min_responses"] = self.min_responses
        if self.round_timeout is not None:
            config["round_timeout"] = self.round_timeout
        if self.validate_every_round:
            config["validate_every_round"] = True
        return config


@dataclass(frozen=True)
class FedAvg(Workflow):
    """Federated averaging, weighted by each site's ``num_examples``."""

    @property
    def name(self) -> str:
        return "fedavg"


@dataclass(frozen=True)
class FedOpt(Workflow):
    """FedAvg's mean fed to a server optimiser (Reddi et al.; Scaleout's ``fedopt``).

    Attributes:
        serveropt: ``"adam"``, ``"yogi"`` or ``"adagrad"``.
        learning_rate, beta1, beta2, tau: the optimiser's η, β₁, β₂ and τ.
    """

    serveropt: Literal["adam", "yogi", "adagrad"] = "adam"
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-4

    @property
    def name(self) -> str:
        return "fedopt"

    def server_config(self) -> dict[str, Any]:
        config = super().server_config()
        config["fedopt"] = {
            "serveropt": self.serveropt,
            "learning_rate": self.learning_rate,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
        }
        return config


class InitialModel:
    """The model round 1 starts from: a dict of numpy arrays, or an ``.npz`` file.

    Arrays are checked now (numeric, finite, safe names) and saved as ``.npz`` when the
    job is exported; a file is checked when the job is exported.
    """

    def __init__(self, model: Mapping[str, Any] | str | os.PathLike[str]) -> None:
        self.path: Path | None = None
        self.params: dict[str, np.ndarray] | None = None
        if isinstance(model, Mapping):
            self.params = dict(check_params(model))
        elif isinstance(model, (str, os.PathLike)):
            self.path = Path(model).expanduser().resolve()
            if not self.path.is_file():
                raise InvalidArgumentError(
                    f"initial model {os.fspath(model)!r} is not a file (looked for {self.path})",
                    path=str(self.path),
                )
        else:
            raise InvalidArgumentError(
                "initial_model must be a dict of numpy arrays or the path of an .npz file, "
                f"got {type(model).__name__}"
            )

    def content(self) -> Path | Callable[[Path], object]:
        """What goes into the app: the file to copy, or a writer of the arrays' ``.npz``."""
        if self.path is not None:
            return self.path
        params = self.params
        assert params is not None
        return lambda target: save_params(params, target)

    def __repr__(self) -> str:
        if self.path is not None:
            return f"InitialModel({str(self.path)!r})"
        return f"InitialModel({sorted(self.params or {})!r})"
