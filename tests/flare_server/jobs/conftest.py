"""Fixtures for the job-store tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from jobzip_helpers import valid_job_files, write_zip

from flare_server.jobs import Submitter


@pytest.fixture
def make_zip(tmp_path: Path) -> Callable[..., Path]:
    """``make_zip(files=None, meta=None, top="hello-numpy", name="job.zip") -> Path``."""

    def make(
        files: Mapping[str, bytes] | None = None,
        *,
        meta: Mapping[str, object] | None = None,
        top: str | None = "hello-numpy",
        name: str = "job.zip",
    ) -> Path:
        return write_zip(
            tmp_path / name, files if files is not None else valid_job_files(meta), top=top
        )

    return make


@pytest.fixture
def submitter() -> Submitter:
    return Submitter("lead@org_a.com", "org_a", "lead")
