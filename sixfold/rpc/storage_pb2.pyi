from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[ErrorCode]
    STALE_EPOCH: _ClassVar[ErrorCode]
    NOT_EPOCH_OWNER: _ClassVar[ErrorCode]
    NOT_AVAILABLE: _ClassVar[ErrorCode]
    TOO_OLD: _ClassVar[ErrorCode]
    UNKNOWN_SEGMENT: _ClassVar[ErrorCode]
    INVALID: _ClassVar[ErrorCode]
    UNAVAILABLE: _ClassVar[ErrorCode]
OK: ErrorCode
STALE_EPOCH: ErrorCode
NOT_EPOCH_OWNER: ErrorCode
NOT_AVAILABLE: ErrorCode
TOO_OLD: ErrorCode
UNKNOWN_SEGMENT: ErrorCode
INVALID: ErrorCode
UNAVAILABLE: ErrorCode

class Truncation(_message.Message):
    __slots__ = ("epoch", "start_lsn", "baseline_lsn")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    BASELINE_LSN_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    start_lsn: int
    baseline_lsn: int
    def __init__(self, epoch: _Optional[int] = ..., start_lsn: _Optional[int] = ..., baseline_lsn: _Optional[int] = ...) -> None: ...

class SegmentAppend(_message.Message):
    __slots__ = ("segment", "records", "members")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    segment: int
    records: bytes
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, segment: _Optional[int] = ..., records: _Optional[bytes] = ..., members: _Optional[_Iterable[str]] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("batch_seq", "volume_id", "volume_epoch", "writer_id", "vdl_hint", "min_read_lsn", "truncations", "segments")
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    VDL_HINT_FIELD_NUMBER: _ClassVar[int]
    MIN_READ_LSN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    batch_seq: int
    volume_id: str
    volume_epoch: int
    writer_id: str
    vdl_hint: int
    min_read_lsn: int
    truncations: _containers.RepeatedCompositeFieldContainer[Truncation]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentAppend]
    def __init__(self, batch_seq: _Optional[int] = ..., volume_id: _Optional[str] = ..., volume_epoch: _Optional[int] = ..., writer_id: _Optional[str] = ..., vdl_hint: _Optional[int] = ..., min_read_lsn: _Optional[int] = ..., truncations: _Optional[_Iterable[_Union[Truncation, _Mapping]]] = ..., segments: _Optional[_Iterable[_Union[SegmentAppend, _Mapping]]] = ...) -> None: ...

class SegmentAck(_message.Message):
    __slots__ = ("segment", "scl")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    segment: int
    scl: int
    def __init__(self, segment: _Optional[int] = ..., scl: _Optional[int] = ...) -> None: ...

class AppendAck(_message.Message):
    __slots__ = ("batch_seq", "error", "detail", "node_epoch", "segments")
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    NODE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    batch_seq: int
    error: ErrorCode
    detail: str
    node_epoch: int
    segments: _containers.RepeatedCompositeFieldContainer[SegmentAck]
    def __init__(self, batch_seq: _Optional[int] = ..., error: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ..., node_epoch: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[SegmentAck, _Mapping]]] = ...) -> None: ...

class GetPageRequest(_message.Message):
    __slots__ = ("volume_id", "segment", "page", "read_lsn", "volume_epoch", "wait_ms", "required_scl")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    READ_LSN_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_SCL_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segment: int
    page: int
    read_lsn: int
    volume_epoch: int
    wait_ms: int
    required_scl: int
    def __init__(self, volume_id: _Optional[str] = ..., segment: _Optional[int] = ..., page: _Optional[int] = ..., read_lsn: _Optional[int] = ..., volume_epoch: _Optional[int] = ..., wait_ms: _Optional[int] = ..., required_scl: _Optional[int] = ...) -> None: ...

class GetPageResponse(_message.Message):
    __slots__ = ("error", "detail", "exists", "data", "page_lsn", "scl")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PAGE_LSN_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    error: ErrorCode
    detail: str
    exists: bool
    data: bytes
    page_lsn: int
    scl: int
    def __init__(self, error: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ..., exists: _Optional[bool] = ..., data: _Optional[bytes] = ..., page_lsn: _Optional[int] = ..., scl: _Optional[int] = ...) -> None: ...

class SegmentState(_message.Message):
    __slots__ = ("segment", "volume_epoch", "epoch_owner", "scl", "highest_lsn", "vdl_hint", "truncations", "members", "record_count", "oldest_version_lsn", "membership_epoch", "next_members", "materialised_lsn", "records_gc_lsn", "vdl_hint_unix_s")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_OWNER_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_LSN_FIELD_NUMBER: _ClassVar[int]
    VDL_HINT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    OLDEST_VERSION_LSN_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    NEXT_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MATERIALISED_LSN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_GC_LSN_FIELD_NUMBER: _ClassVar[int]
    VDL_HINT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    segment: int
    volume_epoch: int
    epoch_owner: str
    scl: int
    highest_lsn: int
    vdl_hint: int
    truncations: _containers.RepeatedCompositeFieldContainer[Truncation]
    members: _containers.RepeatedScalarFieldContainer[str]
    record_count: int
    oldest_version_lsn: int
    membership_epoch: int
    next_members: _containers.RepeatedScalarFieldContainer[str]
    materialised_lsn: int
    records_gc_lsn: int
    vdl_hint_unix_s: float
    def __init__(self, segment: _Optional[int] = ..., volume_epoch: _Optional[int] = ..., epoch_owner: _Optional[str] = ..., scl: _Optional[int] = ..., highest_lsn: _Optional[int] = ..., vdl_hint: _Optional[int] = ..., truncations: _Optional[_Iterable[_Union[Truncation, _Mapping]]] = ..., members: _Optional[_Iterable[str]] = ..., record_count: _Optional[int] = ..., oldest_version_lsn: _Optional[int] = ..., membership_epoch: _Optional[int] = ..., next_members: _Optional[_Iterable[str]] = ..., materialised_lsn: _Optional[int] = ..., records_gc_lsn: _Optional[int] = ..., vdl_hint_unix_s: _Optional[float] = ...) -> None: ...

class SegmentStateRequest(_message.Message):
    __slots__ = ("volume_id", "segments", "shipping_to", "shipped_lsn")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SHIPPING_TO_FIELD_NUMBER: _ClassVar[int]
    SHIPPED_LSN_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segments: _containers.RepeatedScalarFieldContainer[int]
    shipping_to: str
    shipped_lsn: int
    def __init__(self, volume_id: _Optional[str] = ..., segments: _Optional[_Iterable[int]] = ..., shipping_to: _Optional[str] = ..., shipped_lsn: _Optional[int] = ...) -> None: ...

class SegmentStateResponse(_message.Message):
    __slots__ = ("error", "detail", "node_id", "segments")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    error: ErrorCode
    detail: str
    node_id: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentState]
    def __init__(self, error: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ..., node_id: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentState, _Mapping]]] = ...) -> None: ...

class BumpEpochRequest(_message.Message):
    __slots__ = ("volume_id", "segment", "new_epoch", "owner", "truncations", "members")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    NEW_EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segment: int
    new_epoch: int
    owner: str
    truncations: _containers.RepeatedCompositeFieldContainer[Truncation]
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, volume_id: _Optional[str] = ..., segment: _Optional[int] = ..., new_epoch: _Optional[int] = ..., owner: _Optional[str] = ..., truncations: _Optional[_Iterable[_Union[Truncation, _Mapping]]] = ..., members: _Optional[_Iterable[str]] = ...) -> None: ...

class SegmentStateReply(_message.Message):
    __slots__ = ("error", "detail", "state")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    error: ErrorCode
    detail: str
    state: SegmentState
    def __init__(self, error: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ..., state: _Optional[_Union[SegmentState, _Mapping]] = ...) -> None: ...

class TruncateRequest(_message.Message):
    __slots__ = ("volume_id", "segment", "epoch", "owner", "start_lsn", "baseline_lsn")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    BASELINE_LSN_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segment: int
    epoch: int
    owner: str
    start_lsn: int
    baseline_lsn: int
    def __init__(self, volume_id: _Optional[str] = ..., segment: _Optional[int] = ..., epoch: _Optional[int] = ..., owner: _Optional[str] = ..., start_lsn: _Optional[int] = ..., baseline_lsn: _Optional[int] = ...) -> None: ...

class ChangeMembershipRequest(_message.Message):
    __slots__ = ("volume_id", "segment", "volume_epoch", "owner", "membership_epoch", "members", "next_members", "truncations")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segment: int
    volume_epoch: int
    owner: str
    membership_epoch: int
    members: _containers.RepeatedScalarFieldContainer[str]
    next_members: _containers.RepeatedScalarFieldContainer[str]
    truncations: _containers.RepeatedCompositeFieldContainer[Truncation]
    def __init__(self, volume_id: _Optional[str] = ..., segment: _Optional[int] = ..., volume_epoch: _Optional[int] = ..., owner: _Optional[str] = ..., membership_epoch: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., next_members: _Optional[_Iterable[str]] = ..., truncations: _Optional[_Iterable[_Union[Truncation, _Mapping]]] = ...) -> None: ...

class FetchPagesRequest(_message.Message):
    __slots__ = ("volume_id", "segment", "at_lsn", "from_page", "max_bytes")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    AT_LSN_FIELD_NUMBER: _ClassVar[int]
    FROM_PAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segment: int
    at_lsn: int
    from_page: int
    max_bytes: int
    def __init__(self, volume_id: _Optional[str] = ..., segment: _Optional[int] = ..., at_lsn: _Optional[int] = ..., from_page: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class PageImage(_message.Message):
    __slots__ = ("page", "lsn", "epoch", "data")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    page: int
    lsn: int
    epoch: int
    data: bytes
    def __init__(self, page: _Optional[int] = ..., lsn: _Optional[int] = ..., epoch: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class FetchPagesResponse(_message.Message):
    __slots__ = ("error", "detail", "at_lsn", "pages", "has_more", "next_page", "state")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AT_LSN_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    error: ErrorCode
    detail: str
    at_lsn: int
    pages: _containers.RepeatedCompositeFieldContainer[PageImage]
    has_more: bool
    next_page: int
    state: SegmentState
    def __init__(self, error: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ..., at_lsn: _Optional[int] = ..., pages: _Optional[_Iterable[_Union[PageImage, _Mapping]]] = ..., has_more: _Optional[bool] = ..., next_page: _Optional[int] = ..., state: _Optional[_Union[SegmentState, _Mapping]] = ...) -> None: ...

class SeedReplicaRequest(_message.Message):
    __slots__ = ("volume_id", "segment", "volume_epoch", "owner", "truncations", "members", "at_lsn", "pages", "records", "up_to_lsn")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    AT_LSN_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    UP_TO_LSN_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segment: int
    volume_epoch: int
    owner: str
    truncations: _containers.RepeatedCompositeFieldContainer[Truncation]
    members: _containers.RepeatedScalarFieldContainer[str]
    at_lsn: int
    pages: _containers.RepeatedCompositeFieldContainer[PageImage]
    records: bytes
    up_to_lsn: int
    def __init__(self, volume_id: _Optional[str] = ..., segment: _Optional[int] = ..., volume_epoch: _Optional[int] = ..., owner: _Optional[str] = ..., truncations: _Optional[_Iterable[_Union[Truncation, _Mapping]]] = ..., members: _Optional[_Iterable[str]] = ..., at_lsn: _Optional[int] = ..., pages: _Optional[_Iterable[_Union[PageImage, _Mapping]]] = ..., records: _Optional[bytes] = ..., up_to_lsn: _Optional[int] = ...) -> None: ...

class FetchRecordsRequest(_message.Message):
    __slots__ = ("volume_id", "segment", "after_lsn", "up_to_lsn", "max_records", "max_bytes")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_LSN_FIELD_NUMBER: _ClassVar[int]
    UP_TO_LSN_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    segment: int
    after_lsn: int
    up_to_lsn: int
    max_records: int
    max_bytes: int
    def __init__(self, volume_id: _Optional[str] = ..., segment: _Optional[int] = ..., after_lsn: _Optional[int] = ..., up_to_lsn: _Optional[int] = ..., max_records: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class FetchRecordsResponse(_message.Message):
    __slots__ = ("error", "detail", "records", "has_more", "state")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    error: ErrorCode
    detail: str
    records: bytes
    has_more: bool
    state: SegmentState
    def __init__(self, error: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ..., records: _Optional[bytes] = ..., has_more: _Optional[bool] = ..., state: _Optional[_Union[SegmentState, _Mapping]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("node_id", "region", "az", "address", "status", "uptime_s", "segment_count", "log_bytes", "fsync_count", "records_durable")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    FSYNC_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DURABLE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    region: str
    az: str
    address: str
    status: str
    uptime_s: float
    segment_count: int
    log_bytes: int
    fsync_count: int
    records_durable: int
    def __init__(self, node_id: _Optional[str] = ..., region: _Optional[str] = ..., az: _Optional[str] = ..., address: _Optional[str] = ..., status: _Optional[str] = ..., uptime_s: _Optional[float] = ..., segment_count: _Optional[int] = ..., log_bytes: _Optional[int] = ..., fsync_count: _Optional[int] = ..., records_durable: _Optional[int] = ...) -> None: ...
