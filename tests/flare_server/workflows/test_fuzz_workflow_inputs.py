"""Fuzzing what a workflow takes from a site's ``task.result``: any body gives an update,
or an InvalidModel naming the site, never another exception."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import example, given

from flare_protocol.errors import InvalidModel
from flare_protocol.site_topics import TaskResult
from flare_server.workflows.aggregation import ModelUpdate
from tests.fuzzing import mutated_json

_BODY = TaskResult(
    "t-1", "train", 2, "DIFF", 12, {"loss": 0.25, "accuracy": 1, "steps": 3}
).to_dict()
_PARAMS = {"w": np.zeros(3, np.float32)}


@given(mutated_json(_BODY, max_mutations=3))
@example({**_BODY, "metrics": {"loss": 10**400}})  # bug: OverflowError (int to float)
def test_any_result_body_is_an_update_or_invalid_model(body: Any) -> None:
    if not isinstance(body, dict):
        return  # the body's parser refuses anything but an object first
    try:
        update = ModelUpdate.from_result(body, _PARAMS, "site-1")
    except InvalidModel as exc:
        assert exc.message.startswith("site-1:")
        return
    assert update.num_examples >= 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in update.metrics.values())


def test_an_honest_result_body_is_taken_as_sent() -> None:
    update = ModelUpdate.from_result(_BODY, _PARAMS, "site-1")
    assert update.params_type.value == "DIFF" and update.num_examples == 12
    assert update.metrics == {"loss": 0.25, "accuracy": 1.0, "steps": 3.0}
