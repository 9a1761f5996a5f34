from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Instance(_message.Message):
    __slots__ = ("name", "role", "az", "promotion_tier", "address", "health", "vdl")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_TIER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    az: str
    promotion_tier: int
    address: str
    health: str
    vdl: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., az: _Optional[str] = ..., promotion_tier: _Optional[int] = ..., address: _Optional[str] = ..., health: _Optional[str] = ..., vdl: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("name", "kind", "address", "targets", "type", "members", "pg_address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PG_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    address: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    type: str
    members: _containers.RepeatedScalarFieldContainer[str]
    pg_address: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., address: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., type: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., pg_address: _Optional[str] = ...) -> None: ...

class FailoverRecord(_message.Message):
    __slots__ = ("id", "from_instance", "to_instance", "reason", "state", "started_unix_s", "finished_unix_s", "epoch", "min_epoch")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    TO_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MIN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    id: str
    from_instance: str
    to_instance: str
    reason: str
    state: str
    started_unix_s: float
    finished_unix_s: float
    epoch: int
    min_epoch: int
    def __init__(self, id: _Optional[str] = ..., from_instance: _Optional[str] = ..., to_instance: _Optional[str] = ..., reason: _Optional[str] = ..., state: _Optional[str] = ..., started_unix_s: _Optional[float] = ..., finished_unix_s: _Optional[float] = ..., epoch: _Optional[int] = ..., min_epoch: _Optional[int] = ...) -> None: ...

class StorageNode(_message.Message):
    __slots__ = ("name", "az", "address", "health", "down_s", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    DOWN_S_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    az: str
    address: str
    health: str
    down_s: float
    detail: str
    def __init__(self, name: _Optional[str] = ..., az: _Optional[str] = ..., address: _Optional[str] = ..., health: _Optional[str] = ..., down_s: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class CatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CatalogResponse(_message.Message):
    __slots__ = ("replica", "is_leader", "leader", "writer", "epoch", "instances", "endpoints", "failover", "failovers", "storage", "regions_generation", "region", "primary_region", "primary_writer", "primary_writer_endpoint")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    REGIONS_GENERATION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_REGION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_WRITER_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_WRITER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    replica: str
    is_leader: bool
    leader: str
    writer: str
    epoch: int
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    failover: FailoverRecord
    failovers: int
    storage: _containers.RepeatedCompositeFieldContainer[StorageNode]
    regions_generation: int
    region: int
    primary_region: int
    primary_writer: str
    primary_writer_endpoint: str
    def __init__(self, replica: _Optional[str] = ..., is_leader: _Optional[bool] = ..., leader: _Optional[str] = ..., writer: _Optional[str] = ..., epoch: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., failover: _Optional[_Union[FailoverRecord, _Mapping]] = ..., failovers: _Optional[int] = ..., storage: _Optional[_Iterable[_Union[StorageNode, _Mapping]]] = ..., regions_generation: _Optional[int] = ..., region: _Optional[int] = ..., primary_region: _Optional[int] = ..., primary_writer: _Optional[str] = ..., primary_writer_endpoint: _Optional[str] = ...) -> None: ...

class FailoverRequest(_message.Message):
    __slots__ = ("target", "min_epoch")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MIN_EPOCH_FIELD_NUMBER: _ClassVar[int]
    target: str
    min_epoch: int
    def __init__(self, target: _Optional[str] = ..., min_epoch: _Optional[int] = ...) -> None: ...

class FailoverResponse(_message.Message):
    __slots__ = ("failover",)
    FAILOVER_FIELD_NUMBER: _ClassVar[int]
    failover: FailoverRecord
    def __init__(self, failover: _Optional[_Union[FailoverRecord, _Mapping]] = ...) -> None: ...

class CreateEndpointRequest(_message.Message):
    __slots__ = ("name", "type", "members")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteEndpointRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteEndpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AddInstanceRequest(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class RemoveInstanceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveInstanceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
