"""Jobs given as objects (a ``flare_job.FedJob``) rather than folders: exported, then sent.

The Session does not import the Job API: anything with ``export_job(job_root) -> path``
is a job object, so ``session.submit_job(job)`` works with any such builder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

__all__ = ["ExportableJob", "exported"]


@runtime_checkable
class ExportableJob(Protocol):
    """A job builder: writes its job folder under ``job_root`` and returns its path."""

    def export_job(self, job_root: str) -> str: ...


@contextmanager
def exported(job: ExportableJob) -> Iterator[str]:
    """The job exported into a temporary folder, removed on leaving."""
    with tempfile.TemporaryDirectory(prefix="flare-job-") as root:
        yield job.export_job(root)
