"""Fixtures for site tests: a job context with an app folder and a workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from flare_site.executors import JobContext


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    app = tmp_path / "app"
    (app / "custom").mkdir(parents=True)
    return JobContext(job_id="job-1", site_name="site-1", app_dir=app, workspace=tmp_path / "ws")
