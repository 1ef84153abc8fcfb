"""Fuzzing the Session's first look at a job folder before an upload (``JobUpload``): any
meta.json is accepted as a valid job's or refused with an InvalidJobDefinition naming it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from flare_admin._upload import JobUpload
from flare_protocol.errors import InvalidJobDefinition
from tests.fuzzing import fewer_examples, hostile_json_texts, mutated_json

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"
META = json.loads((EXAMPLE / "meta.json").read_bytes())


@given(
    st.one_of(
        hostile_json_texts,
        mutated_json(META, max_mutations=3).map(lambda d: json.dumps(d).encode()),
    )
)
@fewer_examples(2)
@example(b'{"name": "x", "min_clients": ' + b"9" * 5000 + b"}")  # bug: ValueError escaped
@example(b"[" * 50_000)  # bug: RecursionError escaped
def test_any_meta_json_is_a_job_or_invalid_job_definition(meta: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-upload-") as folder:
        job = Path(folder) / "job"
        shutil.copytree(EXAMPLE, job)
        (job / "meta.json").write_bytes(meta)
        try:
            upload = JobUpload.from_path(job)
        except InvalidJobDefinition as exc:
            assert "meta.json" in exc.message, exc.message
        else:
            assert upload.name
