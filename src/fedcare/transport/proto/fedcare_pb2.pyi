from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("protocol_version", "software_version", "site")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    software_version: str
    site: str
    def __init__(self, protocol_version: _Optional[str] = ..., software_version: _Optional[str] = ..., site: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "study", "run_id", "task", "task_hash", "max_message_bytes", "chunk_bytes", "server_time_unix_ms")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STUDY_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_HASH_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    study: str
    run_id: str
    task: str
    task_hash: str
    max_message_bytes: int
    chunk_bytes: int
    server_time_unix_ms: int
    def __init__(self, protocol_version: _Optional[str] = ..., study: _Optional[str] = ..., run_id: _Optional[str] = ..., task: _Optional[str] = ..., task_hash: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., server_time_unix_ms: _Optional[int] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("study",)
    STUDY_FIELD_NUMBER: _ClassVar[int]
    study: str
    def __init__(self, study: _Optional[str] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("bool_value", "int_value", "float_value", "string_value")
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    bool_value: bool
    int_value: int
    float_value: float
    string_value: str
    def __init__(self, bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ...) -> None: ...

class RecordHeader(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256", "blake3")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    blake3: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., blake3: _Optional[str] = ...) -> None: ...

class MessageHeader(_message.Message):
    __slots__ = ("message_id", "kind", "run_id", "round_no", "site", "reply_to", "has_error", "error", "config", "metrics", "records", "audit_head")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_NO_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    HAS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    kind: str
    run_id: str
    round_no: int
    site: str
    reply_to: str
    has_error: bool
    error: str
    config: _containers.MessageMap[str, Scalar]
    metrics: _containers.ScalarMap[str, float]
    records: _containers.RepeatedCompositeFieldContainer[RecordHeader]
    audit_head: str
    def __init__(self, message_id: _Optional[str] = ..., kind: _Optional[str] = ..., run_id: _Optional[str] = ..., round_no: _Optional[int] = ..., site: _Optional[str] = ..., reply_to: _Optional[str] = ..., has_error: _Optional[bool] = ..., error: _Optional[str] = ..., config: _Optional[_Mapping[str, Scalar]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., records: _Optional[_Iterable[_Union[RecordHeader, _Mapping]]] = ..., audit_head: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("message_id", "record_index", "data")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    record_index: int
    data: bytes
    def __init__(self, message_id: _Optional[str] = ..., record_index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class MessageEnd(_message.Message):
    __slots__ = ("message_id", "blake3", "audit_head")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    blake3: _containers.RepeatedScalarFieldContainer[str]
    audit_head: str
    def __init__(self, message_id: _Optional[str] = ..., blake3: _Optional[_Iterable[str]] = ..., audit_head: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("unix_ms",)
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    unix_ms: int
    def __init__(self, unix_ms: _Optional[int] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Proceed(_message.Message):
    __slots__ = ("message_id", "refusal")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    refusal: str
    def __init__(self, message_id: _Optional[str] = ..., refusal: _Optional[str] = ...) -> None: ...

class SiteFrame(_message.Message):
    __slots__ = ("hello", "join", "refusal", "header", "chunk", "end", "ping")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    join: Join
    refusal: Refusal
    header: MessageHeader
    chunk: Chunk
    end: MessageEnd
    ping: Ping
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., join: _Optional[_Union[Join, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., header: _Optional[_Union[MessageHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., end: _Optional[_Union[MessageEnd, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("welcome", "refusal", "header", "chunk", "end", "ping", "proceed", "finished")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PROCEED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    refusal: Refusal
    header: MessageHeader
    chunk: Chunk
    end: MessageEnd
    ping: Ping
    proceed: Proceed
    finished: Finished
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., header: _Optional[_Union[MessageHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., end: _Optional[_Union[MessageEnd, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., proceed: _Optional[_Union[Proceed, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...
