from flare_protocol._generated import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("site_version", "running_jobs", "resources")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SITE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    site_version: str
    running_jobs: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.ScalarMap[str, str]
    def __init__(self, site_version: _Optional[str] = ..., running_jobs: _Optional[_Iterable[str]] = ..., resources: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "heartbeat_timeout", "project")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    project: str
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ..., heartbeat_timeout: _Optional[float] = ..., project: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("session_id", "running_jobs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    running_jobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., running_jobs: _Optional[_Iterable[str]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("message_id", "job_id", "topic", "reply_to", "body_json", "blobs")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    job_id: str
    topic: str
    reply_to: str
    body_json: str
    blobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.BlobRef]
    def __init__(self, message_id: _Optional[str] = ..., job_id: _Optional[str] = ..., topic: _Optional[str] = ..., reply_to: _Optional[str] = ..., body_json: _Optional[str] = ..., blobs: _Optional[_Iterable[_Union[_common_pb2.BlobRef, _Mapping]]] = ...) -> None: ...

class SiteMessage(_message.Message):
    __slots__ = ("heartbeat", "message")
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    heartbeat: Heartbeat
    message: Envelope
    def __init__(self, heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., message: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("message", "heartbeat_ack")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    message: Envelope
    heartbeat_ack: _common_pb2.Empty
    def __init__(self, message: _Optional[_Union[Envelope, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[_common_pb2.Empty, _Mapping]] = ...) -> None: ...

class BlobRequest(_message.Message):
    __slots__ = ("blob_id", "job_id")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    blob_id: str
    job_id: str
    def __init__(self, blob_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...
