"""A job's experiment-tracking records on the admin side, and their export.

Sites stream numbers (``flare.log_metric``, ``SummaryWriter``, ``WandBWriter``,
``MLflowWriter.log_metric``) into the job's metrics log, read as :class:`~flare_admin.MetricRow`
by ``Session.get_job_metrics``. MLflow's params, tags and texts (and strings given to
``WandBWriter.log``) go to the job's params log, read here as :class:`ParamRow` by
``Session.get_job_params``.

``Session.export_metrics`` writes all of it (metrics, the sites' validations, params, tags,
texts) where the usual viewers read it: TensorBoard event files, one run per site, through
tensorboardX (the ``tensorboard`` extra), or an MLflow tracking store, one run per site,
when ``mlflow`` is installed. Neither library is imported until an export asks for it.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_admin import _ops
from flare_admin.results import MetricRow, ValidationRow, _opt_float, _opt_int, _Record
from flare_protocol.errors import InternalError, InvalidArgumentError, MissingDependency
from flare_protocol.job_format import SITE_NAME_RE
from flare_protocol.tracking import RECORD_KINDS

__all__ = ["EXPORT_FORMATS", "ParamRow", "export_mlflow", "export_tensorboard", "job_params"]

#: The formats of ``Session.export_metrics``.
EXPORT_FORMATS = ("tensorboard", "mlflow")
#: Prefix of the tags/keys under which validation metrics are exported.
VALIDATION_PREFIX = "validation/"
_EVENT_FILE = "events.out.tfevents."


@dataclass(frozen=True, eq=True)
class ParamRow(_Record):
    """A param, tag or text a site recorded (``kind``: ``"param"``, ``"tag"``, ``"text"``);
    ``value`` is a string, ``round`` the round the site was working on, ``step`` may be None."""

    site: str
    round: int | None
    kind: str
    key: str
    value: str
    step: int | None = None
    time: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamRow:
        """From one row of the server's params log (untrusted JSON: types coerced)."""
        return cls(
            site=str(data.get("site", "")),
            round=_opt_int(data.get("round")),
            kind=str(data.get("kind", "")),
            key=str(data.get("key", "")),
            value=str(data.get("value", "")),
            step=_opt_int(data.get("step")),
            time=_opt_float(data.get("time")) or 0.0,
        )


def job_params(
    jid: str,
    site: str | None = None,
    kind: str | None = None,
    key: str | None = None,
    offset: int = 0,
) -> _ops.Unary[_ops.Page[ParamRow]]:
    """One page of a job's params log (command ``job_params``)."""
    jid = _ops.job_id(jid)
    if kind is not None and kind not in RECORD_KINDS:
        raise InvalidArgumentError(
            f"kind must be one of {', '.join(sorted(RECORD_KINDS))} or None, got {kind!r}"
        )
    args = {
        "job_id": jid,
        "site": _ops._site_name(site),
        "kind": kind,
        "key": _ops._opt_str(key, "key"),
        "offset": offset,
        "limit": _ops.PAGE_ROWS,
    }
    return _ops.command("job_params", args, _ops._page_of(ParamRow.from_dict), jid)


def param_pages(
    jid: str, site: str | None, kind: str | None, key: str | None, start: object
) -> _ops.Pages[ParamRow]:
    """Every page of ``get_job_params`` (arguments checked before any call)."""
    first = _ops.row_offset(start)
    job_params(jid, site, kind, key)
    return _ops.Pages(lambda offset: job_params(jid, site, kind, key, offset), first)


def export_records(
    fmt: str,
    logdir: str | os.PathLike[str],
    jid: str,
    meta: Mapping[str, Any],
    metrics: Sequence[MetricRow],
    validations: Sequence[ValidationRow],
    params: Sequence[ParamRow],
) -> str:
    """``export_metrics`` once the records are read: TensorBoard event files, or one MLflow
    run per site in the experiment ``<job name> (<job_id>)``; return where."""
    if fmt == "tensorboard":
        return export_tensorboard(logdir, metrics, validations, params)
    name = f"{meta.get('name') or 'job'} ({jid})"
    tags = {"flare.job_id": jid, "flare.job_name": str(meta.get("name") or "")}
    return export_mlflow(logdir, name, metrics, validations, params, tags)


def export_format(value: object) -> str:
    """Check ``format`` of ``export_metrics`` and that its library is installed.

    Raises:
        InvalidArgumentError: an unknown format.
        MissingDependency: the format's library is not installed (naming how to install it).
    """
    if value not in EXPORT_FORMATS:
        raise InvalidArgumentError(
            f"format must be one of {', '.join(EXPORT_FORMATS)}, got {value!r}"
        )
    if value == "tensorboard":
        _require("tensorboardX", "pip install 'flare-admin[tensorboard]' (tensorboardX)")
    else:
        _require("mlflow", "pip install mlflow")
    return str(value)


def _require(module: str, how: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"exporting metrics needs {module}, which is not installed: {how}",
            package=module,
        ) from exc


def _step(row: MetricRow | ParamRow) -> int:
    """The x-axis value: the step the site gave, else the round, else 0."""
    if row.step is not None:
        return row.step
    return row.round if row.round is not None else 0


def _by_site(
    metrics: Sequence[MetricRow], validations: Sequence[ValidationRow], params: Sequence[ParamRow]
) -> dict[str, tuple[list[MetricRow], list[ValidationRow], list[ParamRow]]]:
    sites: dict[str, tuple[list[MetricRow], list[ValidationRow], list[ParamRow]]] = {}

    def side(site: str) -> tuple[list[MetricRow], list[ValidationRow], list[ParamRow]]:
        # Site names come from the server; one that could not name a folder is refused.
        if not SITE_NAME_RE.match(site) or site == "server":
            raise InternalError(f"the server sent a row for site {site!r}, not a site name")
        return sites.setdefault(site, ([], [], []))

    for m in metrics:
        side(m.site)[0].append(m)
    for v in validations:
        side(v.site)[1].append(v)
    for p in params:
        side(p.site)[2].append(p)
    return dict(sorted(sites.items()))


def export_tensorboard(
    logdir: str | os.PathLike[str],
    metrics: Sequence[MetricRow],
    validations: Sequence[ValidationRow],
    params: Sequence[ParamRow],
) -> str:
    """Write one TensorBoard run per site, ``<logdir>/<site>/``; return ``logdir``.

    Metrics are scalars tagged with their key, at their step (else their round), with the
    site's time; validations are ``validation/<name>`` at their round; params, tags and
    texts are text summaries (``param/<key>``, ``tag/<key>``, ``<key>``). Event files an
    earlier export left in a site's run folder are replaced.
    """
    tensorboardx = _require("tensorboardX", "pip install 'flare-admin[tensorboard]'")
    root = Path(logdir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    for site, (rows, checks, records) in _by_site(metrics, validations, params).items():
        run = root / site
        run.mkdir(exist_ok=True)
        for old in run.glob(_EVENT_FILE + "*"):
            old.unlink()
        writer = tensorboardx.SummaryWriter(logdir=str(run))
        try:
            for m in rows:
                writer.add_scalar(m.key, m.value, global_step=_step(m), walltime=m.time or None)
            for v in checks:
                for name, value in v.metrics.items():
                    writer.add_scalar(VALIDATION_PREFIX + name, value, global_step=v.round or 0)
            for p in records:
                tag = p.key if p.kind == "text" else f"{p.kind}/{p.key}"
                writer.add_text(tag, p.value, global_step=_step(p), walltime=p.time or None)
        finally:
            writer.close()
    return str(root)


#: MLflow's limits: characters a metric/param/tag key may hold, longest param value, and
#: items per log_batch call.
_MLFLOW_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")
_MLFLOW_PARAM_CHARS = 6000
_MLFLOW_BATCH = {"metrics": 1000, "params": 100, "tags": 100}


def tracking_store(target: str | os.PathLike[str]) -> tuple[str, str | None]:
    """The MLflow tracking URI and artifact location for ``target``: a URI with a scheme
    (``sqlite:``, ``http:``, ``file:`` ...) as it is, with the store's own artifact
    location; a folder as ``sqlite:///<target>/mlflow.db`` with ``<target>/artifacts``."""
    text = os.fspath(target)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):
        return text, None
    folder = Path(text).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def export_mlflow(
    target: str | os.PathLike[str],
    experiment: str,
    metrics: Sequence[MetricRow],
    validations: Sequence[ValidationRow],
    params: Sequence[ParamRow],
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log one MLflow run per site (named after it) into ``experiment``; return the URI.

    Metrics (validations as ``validation/<name>``) keep their step (else round) and time;
    params and tags keep the last value each key was given; texts become artifacts.
    Each export adds new runs. Keys MLflow refuses have those characters replaced by ``_``.
    """
    mlflow = _require("mlflow", "pip install mlflow")
    entities = importlib.import_module("mlflow.entities")
    uri, artifacts = tracking_store(target)
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = (
        found.experiment_id
        if found
        else client.create_experiment(experiment, artifact_location=artifacts)
    )
    for site, (rows, checks, records) in _by_site(metrics, validations, params).items():
        run = client.create_run(exp_id, run_name=site, tags={**(tags or {}), "flare.site": site})
        run_id = run.info.run_id
        points = [entities.Metric(_key(m.key), m.value, int(m.time * 1000), _step(m)) for m in rows]
        now = int(time.time() * 1000)  # validations carry no time of their own
        for v in checks:
            points += [
                entities.Metric(_key(VALIDATION_PREFIX + k), value, now, v.round or 0)
                for k, value in v.metrics.items()
            ]
        last: dict[str, dict[str, str]] = {"param": {}, "tag": {}}
        for p in records:
            if p.kind == "text":
                client.log_text(run_id, p.value, _artifact_name(p.key))
            elif p.kind in last:
                last[p.kind][_key(p.key)] = p.value
        batches = {
            "metrics": points,
            "params": [
                entities.Param(k, v[:_MLFLOW_PARAM_CHARS]) for k, v in last["param"].items()
            ],
            "tags": [entities.RunTag(k, v) for k, v in last["tag"].items()],
        }
        for kind, items in batches.items():
            size = _MLFLOW_BATCH[kind]
            for start in range(0, len(items), size):
                client.log_batch(run_id, **{kind: items[start : start + size]})
        client.set_terminated(run_id)
    return uri


def _key(key: str) -> str:
    return _MLFLOW_KEY.sub("_", key)[:250] or "_"


def _artifact_name(key: str) -> str:
    """A text's key as a relative artifact path (no '..', no leading '/')."""
    parts = [p for p in re.split(r"[\\/]+", key) if p not in ("", ".", "..")]
    return "/".join(_MLFLOW_KEY.sub("_", p) for p in parts) or "text.txt"
