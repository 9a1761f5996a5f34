from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Value(_message.Message):
    __slots__ = ("int_value", "real_value", "text_value", "blob_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    REAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BLOB_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    real_value: float
    text_value: str
    blob_value: bytes
    def __init__(self, int_value: _Optional[int] = ..., real_value: _Optional[float] = ..., text_value: _Optional[str] = ..., blob_value: _Optional[bytes] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("client_name", "replica_read_consistency")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_READ_CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    replica_read_consistency: str
    def __init__(self, client_name: _Optional[str] = ..., replica_read_consistency: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "role", "node_id", "write_forwarding")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WRITE_FORWARDING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    role: str
    node_id: str
    write_forwarding: bool
    def __init__(self, session_id: _Optional[str] = ..., role: _Optional[str] = ..., node_id: _Optional[str] = ..., write_forwarding: _Optional[bool] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("session_id", "sql", "params")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sql: str
    params: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, session_id: _Optional[str] = ..., sql: _Optional[str] = ..., params: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("error_code", "error_message", "columns", "rows", "rowcount", "lastrowid", "in_transaction", "commit_lsn", "forwarded")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWCOUNT_FIELD_NUMBER: _ClassVar[int]
    LASTROWID_FIELD_NUMBER: _ClassVar[int]
    IN_TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    error_code: str
    error_message: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    rowcount: int
    lastrowid: int
    in_transaction: bool
    commit_lsn: int
    forwarded: bool
    def __init__(self, error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., rowcount: _Optional[int] = ..., lastrowid: _Optional[int] = ..., in_transaction: _Optional[bool] = ..., commit_lsn: _Optional[int] = ..., forwarded: _Optional[bool] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RedoSubscription(_message.Message):
    __slots__ = ("reader_id", "oldest_read_lsn")
    READER_ID_FIELD_NUMBER: _ClassVar[int]
    OLDEST_READ_LSN_FIELD_NUMBER: _ClassVar[int]
    reader_id: str
    oldest_read_lsn: int
    def __init__(self, reader_id: _Optional[str] = ..., oldest_read_lsn: _Optional[int] = ...) -> None: ...

class RedoBatch(_message.Message):
    __slots__ = ("records", "vdl", "vdl_unix_s", "epoch", "writer_id", "first_lsn", "segment_tails", "segment_members")
    class SegmentTailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class SegmentMembersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: SegmentMembers
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[SegmentMembers, _Mapping]] = ...) -> None: ...
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    VDL_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_LSN_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_TAILS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    records: bytes
    vdl: int
    vdl_unix_s: float
    epoch: int
    writer_id: str
    first_lsn: int
    segment_tails: _containers.ScalarMap[int, int]
    segment_members: _containers.MessageMap[int, SegmentMembers]
    def __init__(self, records: _Optional[bytes] = ..., vdl: _Optional[int] = ..., vdl_unix_s: _Optional[float] = ..., epoch: _Optional[int] = ..., writer_id: _Optional[str] = ..., first_lsn: _Optional[int] = ..., segment_tails: _Optional[_Mapping[int, int]] = ..., segment_members: _Optional[_Mapping[int, SegmentMembers]] = ...) -> None: ...

class SegmentMembers(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("lease_epoch",)
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    lease_epoch: int
    def __init__(self, lease_epoch: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "role", "region", "az", "address", "epoch", "vdl", "replica_lag_ms_p50", "replica_lag_ms_p99", "commits", "cached_pages", "health", "sessions", "writer_address", "issued_lsn", "takes_writes", "multi_writer", "source_vdl", "region_lag_ms_last", "source_seen_unix_s", "lease_granted", "lease_refused", "region_lag_samples_total", "region_lag_ms_recent", "seeded_lsn")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_LAG_MS_P50_FIELD_NUMBER: _ClassVar[int]
    REPLICA_LAG_MS_P99_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PAGES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    WRITER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_LSN_FIELD_NUMBER: _ClassVar[int]
    TAKES_WRITES_FIELD_NUMBER: _ClassVar[int]
    MULTI_WRITER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VDL_FIELD_NUMBER: _ClassVar[int]
    REGION_LAG_MS_LAST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SEEN_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    REGION_LAG_SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REGION_LAG_MS_RECENT_FIELD_NUMBER: _ClassVar[int]
    SEEDED_LSN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    region: str
    az: str
    address: str
    epoch: int
    vdl: int
    replica_lag_ms_p50: float
    replica_lag_ms_p99: float
    commits: int
    cached_pages: int
    health: str
    sessions: int
    writer_address: str
    issued_lsn: int
    takes_writes: bool
    multi_writer: bool
    source_vdl: int
    region_lag_ms_last: float
    source_seen_unix_s: float
    lease_granted: bool
    lease_refused: str
    region_lag_samples_total: int
    region_lag_ms_recent: _containers.RepeatedScalarFieldContainer[float]
    seeded_lsn: int
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., region: _Optional[str] = ..., az: _Optional[str] = ..., address: _Optional[str] = ..., epoch: _Optional[int] = ..., vdl: _Optional[int] = ..., replica_lag_ms_p50: _Optional[float] = ..., replica_lag_ms_p99: _Optional[float] = ..., commits: _Optional[int] = ..., cached_pages: _Optional[int] = ..., health: _Optional[str] = ..., sessions: _Optional[int] = ..., writer_address: _Optional[str] = ..., issued_lsn: _Optional[int] = ..., takes_writes: _Optional[bool] = ..., multi_writer: _Optional[bool] = ..., source_vdl: _Optional[int] = ..., region_lag_ms_last: _Optional[float] = ..., source_seen_unix_s: _Optional[float] = ..., lease_granted: _Optional[bool] = ..., lease_refused: _Optional[str] = ..., region_lag_samples_total: _Optional[int] = ..., region_lag_ms_recent: _Optional[_Iterable[float]] = ..., seeded_lsn: _Optional[int] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("failover_id", "min_epoch")
    FAILOVER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    failover_id: str
    min_epoch: int
    def __init__(self, failover_id: _Optional[str] = ..., min_epoch: _Optional[int] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("epoch", "vdl", "node_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    vdl: int
    node_id: str
    def __init__(self, epoch: _Optional[int] = ..., vdl: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ("writer_address", "writer_id", "epoch")
    WRITER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    writer_address: str
    writer_id: str
    epoch: int
    def __init__(self, writer_address: _Optional[str] = ..., writer_id: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class FollowResponse(_message.Message):
    __slots__ = ("outcome", "detail")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    detail: str
    def __init__(self, outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ReplaceStorageNodeRequest(_message.Message):
    __slots__ = ("old_address", "healthy_addresses")
    OLD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    old_address: str
    healthy_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, old_address: _Optional[str] = ..., healthy_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplaceStorageNodeResponse(_message.Message):
    __slots__ = ("pgs_holding", "pgs_changing", "pgs_without_candidate", "detail")
    PGS_HOLDING_FIELD_NUMBER: _ClassVar[int]
    PGS_CHANGING_FIELD_NUMBER: _ClassVar[int]
    PGS_WITHOUT_CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    pgs_holding: int
    pgs_changing: int
    pgs_without_candidate: int
    detail: str
    def __init__(self, pgs_holding: _Optional[int] = ..., pgs_changing: _Optional[int] = ..., pgs_without_candidate: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ChangedPage(_message.Message):
    __slots__ = ("page", "image")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    page: int
    image: bytes
    def __init__(self, page: _Optional[int] = ..., image: _Optional[bytes] = ...) -> None: ...

class MultiWriterCommitRequest(_message.Message):
    __slots__ = ("writer_id", "read_lsn", "pages", "page0_base", "page0_mine")
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    READ_LSN_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE0_BASE_FIELD_NUMBER: _ClassVar[int]
    PAGE0_MINE_FIELD_NUMBER: _ClassVar[int]
    writer_id: str
    read_lsn: int
    pages: _containers.RepeatedCompositeFieldContainer[ChangedPage]
    page0_base: bytes
    page0_mine: bytes
    def __init__(self, writer_id: _Optional[str] = ..., read_lsn: _Optional[int] = ..., pages: _Optional[_Iterable[_Union[ChangedPage, _Mapping]]] = ..., page0_base: _Optional[bytes] = ..., page0_mine: _Optional[bytes] = ...) -> None: ...

class MultiWriterCommitResponse(_message.Message):
    __slots__ = ("commit_lsn", "error_code", "detail", "winner_lsn")
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    WINNER_LSN_FIELD_NUMBER: _ClassVar[int]
    commit_lsn: int
    error_code: str
    detail: str
    winner_lsn: int
    def __init__(self, commit_lsn: _Optional[int] = ..., error_code: _Optional[str] = ..., detail: _Optional[str] = ..., winner_lsn: _Optional[int] = ...) -> None: ...
