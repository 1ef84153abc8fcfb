"""The job runner's side of the wire: envelopes it sends, and site messages as typed events."""

from __future__ import annotations

import json
import uuid

from flare_protocol._generated import common_pb2, site_pb2
from flare_protocol.errors import MessageError
from flare_protocol.site_topics import (
    DriverReply,
    JobLog,
    JobStatusReport,
    Metric,
    Sender,
    ServerBody,
    SiteTopic,
    TaskResult,
    parse_body,
    topic_from,
)
from flare_server.job_runner.events import MalformedMessage, SiteMessage

__all__ = ["envelope", "job_message"]


def envelope(job_id: str, body: ServerBody, *refs: common_pb2.BlobRef) -> site_pb2.Envelope:
    """A message of ``body``'s topic for one of the job's sites, naming ``refs``' blobs."""
    return site_pb2.Envelope(
        message_id=uuid.uuid4().hex,
        job_id=job_id,
        topic=body.TOPIC.value,
        body_json=body.to_json(),
        blobs=list(refs),
    )


def job_message(site: str, message: site_pb2.Envelope) -> SiteMessage | MalformedMessage | None:
    """What a site's message about a job means for its run (None: nothing, e.g. a reply
    that came too late for its request)."""
    topic = topic_from(message.topic, Sender.SITE)
    if topic is None or topic is SiteTopic.SITE_REPLY:
        return None
    try:
        body = parse_body(topic, message.body_json)
    except MessageError as exc:
        return MalformedMessage(site, topic, exc.message, _task_id(topic, message.body_json))
    assert isinstance(body, JobStatusReport | TaskResult | Metric | JobLog | DriverReply)
    return SiteMessage(site, body, tuple(ref.blob_id for ref in message.blobs))


def _task_id(topic: SiteTopic, text: str) -> str | None:
    """The task a malformed ``task.result`` answers, if it names one (to fail that task)."""
    if topic is not SiteTopic.TASK_RESULT:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, too many digits, nested too deeply
        return None
    task_id = data.get("task_id") if isinstance(data, dict) else None
    return task_id[:128] if isinstance(task_id, str) and task_id else None
