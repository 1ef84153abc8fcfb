"""Fuzzing the site's check of the update its user code wrote (``verify_update``): a model
passes with its digest and size, anything else is an InvalidModel."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from hypothesis import given

from flare_protocol.errors import InvalidModel
from flare_protocol.models import Params, dump_params
from flare_site.update_check import verify_update
from tests.fuzzing import fewer_examples
from tests.npz_fuzzing import hostile_npz, params, with_regressions


def _verify(data: bytes) -> tuple[str, int]:
    with tempfile.TemporaryDirectory(prefix="fuzz-update-") as folder:
        path = Path(folder) / "update.npz"
        path.write_bytes(data)
        return verify_update(path, max_bytes=1024**2)


@given(params)
@fewer_examples(2)
def test_a_model_passes_with_its_digest_and_size(model: Params) -> None:
    data = dump_params(model)
    assert _verify(data) == (hashlib.sha256(data).hexdigest(), len(data))


@given(hostile_npz())
@fewer_examples(2)
@with_regressions
def test_any_update_file_passes_or_is_invalid_model(data: bytes) -> None:
    try:
        digest, size = _verify(data)
    except InvalidModel as exc:
        assert exc.message
    else:
        assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
