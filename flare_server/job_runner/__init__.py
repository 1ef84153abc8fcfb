"""The job runner: takes a runnable job from the scheduler and runs it on its sites.

Theory of operation. :class:`JobRunner` (:mod:`.runner`) is the scheduler's
:class:`~flare_server.scheduler.JobLauncher`. For each job it starts one :class:`JobRun`
(:mod:`.run`), a coroutine that owns everything of that job and consumes one queue of
typed events (:mod:`.events`: site messages, site connects and disconnects, timers, an
admin abort, the server stopping), so the job's state is only ever touched by that
coroutine. A run goes through four phases (:mod:`.flow`), each in its own module:

1. **Prepare** (:mod:`.prepare`, :mod:`.plan`; in a worker thread): extract the stored
   archive into the job's work area (``<job dir>/work/``), parse the server app's config
   and each site app's client config, load the initial model (the app's, or another
   job's final model when ``initial_model_job_id`` is set, once the submitter's download
   right on that job is checked again: :mod:`flare_server.model_source`), zip each site
   app.
2. **Deploy** (:mod:`.deploy`): ``job.deploy`` with the app archive to every site, then
   wait for ``job.status deployed`` (``deploy_timeout``); a failure, a lost site or the
   timeout leaves the site out while enough remain, else ends the job
   ``FINISHED:FAILED_TO_RUN`` naming the sites. Then RUNNING.
3. **Rounds** (:mod:`.rounds`): the pure :class:`~flare_server.workflows.RoundController`
   decides; the run carries out its actions (tasks with the global model as a blob,
   timers, round models, validations). Every controller call that may aggregate runs in
   a worker thread, so a 100 MB model never blocks the event loop. A site that
   disconnects gets ``reconnect_grace`` seconds to come back still running the job (its
   results arrive after the reconnect; an unanswered task is sent again); otherwise it is
   lost.
4. **Finish** (:mod:`.finish`): the final model is saved, ``job.end`` goes to the
   connected sites, their ``job.log`` uploads are awaited (``log_wait``), the result
   folder is finalized (:mod:`flare_server.results`), and only then the final status is
   written, so a caller who sees ``FINISHED:*`` can download a complete result. An admin
   abort is written to the store first (by the Admin service) and cannot be overwritten:
   the lifecycle table refuses any later move.

A job a server crash interrupted (still RUNNING when the server starts again) is resumed
from its last completed round: the run saves a resume point after deployment and after
every round (:mod:`.checkpoint`), and at the next start :mod:`.resume` triages the RUNNING
jobs, waits ``resume_grace`` for a resumed job's sites, and the rounds go on from the
controller's ``resume`` (driver jobs and jobs without a usable checkpoint end
``FINISHED:ABNORMAL``).

What sites stream in any phase (metrics, params, logs) is kept by :mod:`.records`. Blobs
are served and received by :mod:`flare_server.blobs`: a site may fetch only its own job's
blobs and may upload an update only for a task it was given. Messages travel as the typed
bodies of :mod:`flare_protocol.site_topics` (:mod:`.messages`).
"""

from __future__ import annotations

from flare_server.job_runner.run import FAILED_TO_RUN, JobRun
from flare_server.job_runner.runner import JobRunner

__all__ = ["FAILED_TO_RUN", "JobRun", "JobRunner"]
