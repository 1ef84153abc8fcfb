"""What a site streams about a job, in any phase: metric, param and text records, its log.

Records become rows of the job's result folder (``metrics.jsonl``, ``params.jsonl``); a
record the folder cannot use (a name too long, a number that is not finite, a kind it
does not know) is dropped, as the folder's size caps drop what is over them.
"""

from __future__ import annotations

import math
import time

from flare_protocol.site_topics import JobLog, Metric
from flare_protocol.tracking import MAX_RECORD_CHARS, METRIC, RECORD_KINDS
from flare_server.job_runner.run import JobRun

__all__ = ["KEY_MAX", "finite", "keep_log", "keep_record", "round_now"]

#: The longest metric, param or validation name kept.
KEY_MAX = 256


def finite(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None."""
    return value if value is not None and math.isfinite(value) else None


def round_now(run: JobRun, site: str, given: int | None) -> int:
    """The round a streamed record belongs to: the one the site named, else the round of
    its current task; 0 before round 1 (a script logging while others deploy)."""
    if given is not None:
        return given
    if run.controller is None:
        return 0
    task = run.controller.current_task(site)
    return task.round if task else run.controller.round


def keep_record(run: JobRun, site: str, record: Metric) -> None:
    """A metric (a number), or a param, tag or text (a string), as a row of the results."""
    results = run.results
    assert results is not None
    if not record.key or len(record.key) > KEY_MAX:
        return
    when = finite(record.time) or time.time()
    rnd = round_now(run, site, record.round)
    if record.kind == METRIC:
        value = finite(record.value)
        if value is None:
            return
        kept = results.add_metric(site, rnd, record.key, value, record.step, when)
        writer, name = results.metrics, "metrics"
    else:
        text = record.text
        if record.kind not in RECORD_KINDS or text is None or len(text) > MAX_RECORD_CHARS:
            return
        kept = results.add_param(site, rnd, record.kind, record.key, text, record.step, when)
        writer, name = results.params, "params"
    if not kept and writer.dropped == 1:
        run.log.warning(
            "job %s: %s.jsonl reached %d bytes; further %s are dropped",
            run.job_id,
            name,
            writer.max_bytes,
            name,
        )


def keep_log(run: JobRun, site: str, log: JobLog, blob_ids: tuple[str, ...]) -> None:
    """The site's log of the job (an upload it names), or why it sent none."""
    blob = run.blobs.uploaded(blob_ids[0], run.job_id, site) if blob_ids else None
    run.logs[site] = blob if blob is not None else (log.error or "no log sent")
