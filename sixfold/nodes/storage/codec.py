"""Payloads of the storage node's log frames.

RECORDS       [u16 volume length][volume utf-8][u32 segment][records...]
              the records exactly as the writer encoded them (each with its CRC),
              so a batch is persisted without re-encoding.
SEGMENT_META  [u16 volume length][volume utf-8][u32 segment][JSON meta]
              epoch, owner, truncation history, members (with the membership epoch
              and, while a member is replaced, next_members), vdl_hint, min_read_lsn:
              rare (epoch changes, truncations, membership), so readable JSON.
              A history entry is [epoch, start_lsn, baseline_lsn]; [epoch, start_lsn]
              (written before baselines existed) reads as baseline = start_lsn.
"""

from __future__ import annotations

import enum
import json
import struct

from sixfold.nodes.storage.replica import Meta
from sixfold.volume.epochs import Truncation

_KEY = struct.Struct("<H")
_SEGMENT = struct.Struct("<I")
VOLUME_ID_MAX_BYTES = 256


class FrameType(enum.IntEnum):
    RECORDS = 1
    SEGMENT_META = 2


class CodecError(ValueError):
    pass


def _key(volume_id: str, segment: int) -> bytes:
    volume = volume_id.encode()
    assert 0 < len(volume) <= VOLUME_ID_MAX_BYTES and 0 <= segment < 2**32
    return _KEY.pack(len(volume)) + volume + _SEGMENT.pack(segment)


def _split_key(payload: bytes) -> tuple[str, int, int]:
    if len(payload) < _KEY.size:
        raise CodecError("payload too short for its key")
    (n,) = _KEY.unpack_from(payload, 0)
    end = _KEY.size + n + _SEGMENT.size
    if n == 0 or n > VOLUME_ID_MAX_BYTES or len(payload) < end:
        raise CodecError("bad volume id length")
    volume_id = payload[_KEY.size : _KEY.size + n].decode()
    (segment,) = _SEGMENT.unpack_from(payload, _KEY.size + n)
    return volume_id, segment, end


def encode_records(volume_id: str, segment: int, records_blob: bytes) -> bytes:
    return _key(volume_id, segment) + records_blob


def decode_records(payload: bytes) -> tuple[str, int, bytes]:
    volume_id, segment, end = _split_key(payload)
    return volume_id, segment, payload[end:]


def meta_to_json(meta: Meta, vdl_hint: int, min_read_lsn: int) -> dict:
    return {
        "epoch": meta.epoch,
        "owner": meta.owner,
        "history": [[t.epoch, t.start_lsn, t.baseline_lsn] for t in meta.history],
        "members": list(meta.members),
        "membership_epoch": meta.membership_epoch,
        "next_members": list(meta.next_members),
        "vdl_hint": vdl_hint,
        "min_read_lsn": min_read_lsn,
    }


def meta_from_json(doc: dict) -> tuple[Meta, int, int]:
    try:
        meta = Meta(
            int(doc["epoch"]),
            str(doc["owner"]),
            tuple(_truncation(entry) for entry in doc["history"]),
            tuple(str(m) for m in doc["members"]),
            int(doc.get("membership_epoch", 0)),  # (absent: written before membership changes)
            tuple(str(m) for m in doc.get("next_members", ())),
        )
        return meta, int(doc.get("vdl_hint", 0)), int(doc.get("min_read_lsn", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise CodecError(f"bad segment meta: {e}") from None


def _truncation(entry) -> Truncation:
    if len(entry) == 2:  # before baselines: nothing known to be re-stamped (see epochs.py)
        return Truncation(int(entry[0]), int(entry[1]))
    epoch, start, baseline = entry
    return Truncation(int(epoch), int(start), int(baseline))


def encode_meta(volume_id: str, segment: int, meta: Meta, vdl_hint: int, min_read_lsn: int) -> bytes:
    body = json.dumps(meta_to_json(meta, vdl_hint, min_read_lsn), separators=(",", ":")).encode()
    return _key(volume_id, segment) + body


def decode_meta(payload: bytes) -> tuple[str, int, Meta, int, int]:
    volume_id, segment, end = _split_key(payload)
    try:
        doc = json.loads(payload[end:])
    except ValueError as e:
        raise CodecError(f"bad segment meta JSON: {e}") from None
    meta, vdl_hint, min_read_lsn = meta_from_json(doc)
    return volume_id, segment, meta, vdl_hint, min_read_lsn
