"""Starting a job from another job's final model: who may, checked where the model is read.

A job's ``initial_model_job_id`` is server-owned: the server sets it only from a
``submit_job`` or ``clone_job`` request whose caller passes :func:`authorize_model_source`
(meta.json may not carry it). The job runner calls the same function again, for the
submitter recorded in the job's meta, at the moment it loads the model: a right lost
while the job waited (e.g. a changed ``authorization.json``), or a source deleted since,
ends the job ``FINISHED:FAILED_TO_RUN`` instead of reading the model.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from flare_protocol.errors import JobNotDone
from flare_server.authz import Policy, Resource, Right, Subject
from flare_server.jobs import JobRepository, JobStatus
from flare_server.results import FINAL_MODEL

__all__ = ["authorize_model_source", "check_model_source"]


def authorize_model_source(
    store: JobRepository, policy: Policy, who: Subject, model_job: str
) -> Path:
    """The final model of ``model_job``, if ``who`` may start a job from it: they hold the
    download right on that job, and it completed with a final model.

    Blocking (the store): call it in a worker thread from the event loop.
    Raises:
        InvalidArgumentError, JobNotFound: ``model_job`` is malformed or unknown.
        AuthorizationError: ``who`` may not download ``model_job``.
        JobNotDone: ``model_job`` did not complete or has no final model (with its status).
    """
    meta = store.get(model_job)
    policy.require(
        who,
        Right.DOWNLOAD_JOB,
        Resource.job(meta.job_id, str(meta.get("submitter_name")), str(meta.get("submitter_org"))),
        action="reuse the model of",
        job_id=meta.job_id,
    )
    status = meta.status
    path = store.result_dir(meta.job_id) / FINAL_MODEL
    has_model = path.is_file()
    if status is not JobStatus.FINISHED_COMPLETED or not has_model:
        raise JobNotDone(
            f"job {meta.job_id} cannot seed a new job: it is {status.value}"
            + ("" if has_model else " and has no final global model")
            + "; use a job that finished FINISHED:COMPLETED",
            job_id=meta.job_id,
            status=status.value,
        )
    return path


async def check_model_source(
    store: JobRepository, policy: Policy, who: Subject, model_job: str
) -> None:
    """:func:`authorize_model_source` from the event loop (the store work in a thread).

    Raises:
        JobNotFound, AuthorizationError, JobNotDone (with the job's status).
    """
    await asyncio.to_thread(authorize_model_source, store, policy, who, model_job)
