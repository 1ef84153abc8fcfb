from flare_protocol._generated import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HelloReply(_message.Message):
    __slots__ = ("name", "org", "role", "project", "server_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    org: str
    role: str
    project: str
    server_version: str
    def __init__(self, name: _Optional[str] = ..., org: _Optional[str] = ..., role: _Optional[str] = ..., project: _Optional[str] = ..., server_version: _Optional[str] = ...) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("name", "org", "connected_since", "last_heartbeat", "running_jobs", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    org: str
    connected_since: float
    last_heartbeat: float
    running_jobs: _containers.RepeatedScalarFieldContainer[str]
    address: str
    def __init__(self, name: _Optional[str] = ..., org: _Optional[str] = ..., connected_since: _Optional[float] = ..., last_heartbeat: _Optional[float] = ..., running_jobs: _Optional[_Iterable[str]] = ..., address: _Optional[str] = ...) -> None: ...

class SitesReply(_message.Message):
    __slots__ = ("sites",)
    SITES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ...) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ("job_id", "name", "status", "submit_time", "duration", "submitter_name", "submitter_org")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_ORG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    status: str
    submit_time: float
    duration: float
    submitter_name: str
    submitter_org: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., submit_time: _Optional[float] = ..., duration: _Optional[float] = ..., submitter_name: _Optional[str] = ..., submitter_org: _Optional[str] = ...) -> None: ...

class SystemInfoReply(_message.Message):
    __slots__ = ("server_name", "project", "start_time", "sites", "running_jobs", "server_version", "expiring")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    project: str
    start_time: float
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    running_jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    server_version: str
    expiring: _containers.RepeatedCompositeFieldContainer[CertificateExpiry]
    def __init__(self, server_name: _Optional[str] = ..., project: _Optional[str] = ..., start_time: _Optional[float] = ..., sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ..., running_jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ..., server_version: _Optional[str] = ..., expiring: _Optional[_Iterable[_Union[CertificateExpiry, _Mapping]]] = ...) -> None: ...

class CertificateExpiry(_message.Message):
    __slots__ = ("what", "name", "serial", "not_after")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    what: str
    name: str
    serial: str
    not_after: float
    def __init__(self, what: _Optional[str] = ..., name: _Optional[str] = ..., serial: _Optional[str] = ..., not_after: _Optional[float] = ...) -> None: ...

class UpdateRevocationsRequest(_message.Message):
    __slots__ = ("crl",)
    CRL_FIELD_NUMBER: _ClassVar[int]
    crl: bytes
    def __init__(self, crl: _Optional[bytes] = ...) -> None: ...

class UpdateRevocationsReply(_message.Message):
    __slots__ = ("revoked", "crl_number", "previous_crl_number", "streams_dropped")
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CRL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CRL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STREAMS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    crl_number: int
    previous_crl_number: int
    streams_dropped: int
    def __init__(self, revoked: _Optional[int] = ..., crl_number: _Optional[int] = ..., previous_crl_number: _Optional[int] = ..., streams_dropped: _Optional[int] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("job_id", "round")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class CloneJobRequest(_message.Message):
    __slots__ = ("job_id", "initial_model_job_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INITIAL_MODEL_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    initial_model_job_id: str
    def __init__(self, job_id: _Optional[str] = ..., initial_model_job_id: _Optional[str] = ...) -> None: ...

class JobReply(_message.Message):
    __slots__ = ("job_id", "meta_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    meta_json: str
    def __init__(self, job_id: _Optional[str] = ..., meta_json: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "metrics_offset", "validations_offset", "want_metrics", "want_validations")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    VALIDATIONS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    WANT_METRICS_FIELD_NUMBER: _ClassVar[int]
    WANT_VALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    metrics_offset: int
    validations_offset: int
    want_metrics: bool
    want_validations: bool
    def __init__(self, job_id: _Optional[str] = ..., metrics_offset: _Optional[int] = ..., validations_offset: _Optional[int] = ..., want_metrics: _Optional[bool] = ..., want_validations: _Optional[bool] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("meta_json", "metrics_json", "validations_json")
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    VALIDATIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    meta_json: str
    metrics_json: str
    validations_json: str
    def __init__(self, meta_json: _Optional[str] = ..., metrics_json: _Optional[str] = ..., validations_json: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("detailed", "limit", "id_prefix", "name_prefix", "reverse")
    DETAILED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    detailed: bool
    limit: int
    id_prefix: str
    name_prefix: str
    reverse: bool
    def __init__(self, detailed: _Optional[bool] = ..., limit: _Optional[int] = ..., id_prefix: _Optional[str] = ..., name_prefix: _Optional[str] = ..., reverse: _Optional[bool] = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs", "meta_json")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    meta_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ..., meta_json: _Optional[_Iterable[str]] = ...) -> None: ...

class CommandRequest(_message.Message):
    __slots__ = ("command", "args_json")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    command: str
    args_json: str
    def __init__(self, command: _Optional[str] = ..., args_json: _Optional[str] = ...) -> None: ...

class CommandReply(_message.Message):
    __slots__ = ("result_json",)
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    result_json: str
    def __init__(self, result_json: _Optional[str] = ...) -> None: ...

class DriverNode(_message.Message):
    __slots__ = ("node_id", "name", "connected")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    name: str
    connected: bool
    def __init__(self, node_id: _Optional[int] = ..., name: _Optional[str] = ..., connected: _Optional[bool] = ...) -> None: ...

class DriverInfo(_message.Message):
    __slots__ = ("job_id", "nodes", "run_config_json", "default_ttl", "max_message_bytes", "idle_timeout")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[DriverNode]
    run_config_json: str
    default_ttl: float
    max_message_bytes: int
    idle_timeout: float
    def __init__(self, job_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[DriverNode, _Mapping]]] = ..., run_config_json: _Optional[str] = ..., default_ttl: _Optional[float] = ..., max_message_bytes: _Optional[int] = ..., idle_timeout: _Optional[float] = ...) -> None: ...

class DriverPushStart(_message.Message):
    __slots__ = ("job_id", "ack")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    ack: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., ack: _Optional[_Iterable[str]] = ...) -> None: ...

class DriverPushItem(_message.Message):
    __slots__ = ("start", "content", "message_json")
    START_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_JSON_FIELD_NUMBER: _ClassVar[int]
    start: DriverPushStart
    content: _common_pb2.TransferChunk
    message_json: str
    def __init__(self, start: _Optional[_Union[DriverPushStart, _Mapping]] = ..., content: _Optional[_Union[_common_pb2.TransferChunk, _Mapping]] = ..., message_json: _Optional[str] = ...) -> None: ...

class DriverPushReply(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DriverRepliesRequest(_message.Message):
    __slots__ = ("job_id", "message_ids", "wait", "ack")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    wait: bool
    ack: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ..., wait: _Optional[bool] = ..., ack: _Optional[_Iterable[str]] = ...) -> None: ...

class DriverRepliesItem(_message.Message):
    __slots__ = ("reply_json", "content")
    REPLY_JSON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    reply_json: str
    content: _common_pb2.TransferChunk
    def __init__(self, reply_json: _Optional[str] = ..., content: _Optional[_Union[_common_pb2.TransferChunk, _Mapping]] = ...) -> None: ...
