"""What the metrics channel carries, from a training script through its site to the server.

A record is a ``metric`` (a finite number: ``flare.log_metric``, the SummaryWriter, a
WandB number, MLflow's ``log_metric``) or a string record of one of :data:`RECORD_KINDS`:
MLflow's params, tags and texts (a WandB string becomes a ``text``). The server keeps
metrics in ``metrics.jsonl`` and string records in ``params.jsonl`` (docs/jobs.md).
"""

from __future__ import annotations

__all__ = ["MAX_RECORD_CHARS", "METRIC", "RECORD_KINDS"]

#: The kind of a numeric record (the default when a record names no kind).
METRIC = "metric"
#: Kinds of string records: MLflow's params, tags and texts.
RECORD_KINDS = frozenset({"param", "tag", "text"})
#: Longest string record value, in characters; longer ones are refused by the Client API
#: and dropped by the site and the server.
MAX_RECORD_CHARS = 64 * 1024
