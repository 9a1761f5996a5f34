"""SQLite values <-> protobuf Value (shared by the compute server and the DB-API client)."""

from __future__ import annotations

from sixfold.rpc import compute_pb2 as cpb

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def to_pb(value) -> cpb.Value:
    if value is None:
        return cpb.Value()
    if isinstance(value, bool):
        return cpb.Value(int_value=int(value))
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"integer {value} does not fit in 64 bits")
        return cpb.Value(int_value=value)
    if isinstance(value, float):
        return cpb.Value(real_value=value)
    if isinstance(value, str):
        return cpb.Value(text_value=value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return cpb.Value(blob_value=bytes(value))
    raise TypeError(f"cannot send a parameter of type {type(value).__name__}; use int, float, str, bytes or None")


def from_pb(value: cpb.Value):
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)
