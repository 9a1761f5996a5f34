"""Log records: the unit the writer sends and storage nodes persist.

One encoding is used on the wire (AppendRequest.records), on disk (the storage
node's log) and in gossip, so a record is checked by CRC when it is built, when
it is received, and again when it is read back from disk.

Layout (little-endian):

    crc32   u32   over everything after this field
    body    u32   length of what follows (fixed fields + payload)
    lsn     u64   volume-wide, dense: the writer uses every LSN exactly once
    prev    u64   backlink: the previous LSN of the same segment (0 = none)
    epoch   u64   volume epoch the record was written under
    page    u32   page number in the volume (for VOLUME_SIZE: the new page count)
    kind    u8    RecordKind
    flags   u8    FLAG_CPL marks the last record of a transaction
    payload ...   FULL_PAGE: the page image; PAGE_DELTA: patches (see make_delta)
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from dataclasses import dataclass

PAGE_SIZE_BYTES = 4096
HEADER = struct.Struct("<IIQQQIBB")
_CRC_AND_LEN = 8
_FIXED_BODY = HEADER.size - _CRC_AND_LEN
PAYLOAD_MAX_BYTES = PAGE_SIZE_BYTES + 1024  # a delta never beats a full page by being larger
FLAG_CPL = 0x01
_PATCH = struct.Struct("<HH")


class RecordKind(enum.IntEnum):
    FULL_PAGE = 1
    PAGE_DELTA = 2
    VOLUME_SIZE = 3


class RecordError(ValueError):
    """A record that is malformed or fails its CRC."""


# Not frozen, though nothing may change a record once built: a frozen dataclass sets each
# field through object.__setattr__ (~8x the cost), and a record is built on every hot path
# (encoded by the writer, decoded by every storage node). Hashable like a frozen one.
@dataclass(slots=True, unsafe_hash=True)
class LogRecord:
    lsn: int
    prev_lsn: int
    epoch: int
    page: int
    kind: RecordKind
    flags: int
    payload: bytes

    @property
    def is_cpl(self) -> bool:
        return bool(self.flags & FLAG_CPL)

    def encode(self) -> bytes:
        return encode_record(self)


_KINDS = {kind.value: kind for kind in RecordKind}


def _check_fields(record: LogRecord) -> None:
    if record.lsn <= 0 or record.prev_lsn >= record.lsn:
        raise RecordError(f"record lsn={record.lsn} prev={record.prev_lsn}: backlink must point below the lsn")
    if record.epoch <= 0:
        raise RecordError(f"record lsn={record.lsn}: epoch must be positive")
    if _KINDS.get(record.kind) is not record.kind:
        raise RecordError(f"record lsn={record.lsn}: unknown kind {record.kind}")
    if record.kind is RecordKind.FULL_PAGE and len(record.payload) != PAGE_SIZE_BYTES:
        raise RecordError(f"record lsn={record.lsn}: full page of {len(record.payload)} bytes")
    if len(record.payload) > PAYLOAD_MAX_BYTES:
        raise RecordError(f"record lsn={record.lsn}: payload of {len(record.payload)} bytes is too large")


def encode_record(record: LogRecord) -> bytes:
    _check_fields(record)
    body = HEADER.pack(
        0, _FIXED_BODY + len(record.payload), record.lsn, record.prev_lsn, record.epoch,
        record.page, int(record.kind), record.flags,
    )[_CRC_AND_LEN:] + record.payload
    return struct.pack("<II", zlib.crc32(body), len(body)) + body


def decode_records(blob: bytes | memoryview, max_records: int = 1_000_000) -> list[LogRecord]:
    """Decodes a concatenation of records; any damage raises RecordError."""
    records: list[LogRecord] = []
    view = memoryview(blob)
    offset = 0
    while offset < len(view):
        record, offset = decode_one(view, offset)
        records.append(record)
        if len(records) > max_records:
            raise RecordError(f"more than {max_records} records in one batch")
    return records


def decode_one(view: memoryview, offset: int) -> tuple[LogRecord, int]:
    """Decodes the record at offset; returns it and the offset after it."""
    if len(view) - offset < HEADER.size:
        raise RecordError(f"truncated record header at offset {offset}")
    crc, body_len, lsn, prev_lsn, epoch, page, kind, flags = HEADER.unpack_from(view, offset)
    if body_len < _FIXED_BODY or body_len > _FIXED_BODY + PAYLOAD_MAX_BYTES:
        raise RecordError(f"bad record length {body_len} at offset {offset}")
    end = offset + _CRC_AND_LEN + body_len
    if end > len(view):
        raise RecordError(f"truncated record at offset {offset}")
    if zlib.crc32(view[offset + _CRC_AND_LEN:end]) != crc:
        raise RecordError(f"CRC mismatch at offset {offset}")
    record_kind = _KINDS.get(kind)
    if record_kind is None:
        raise RecordError(f"unknown record kind {kind} at offset {offset}")
    record = LogRecord(lsn, prev_lsn, epoch, page, record_kind, flags, bytes(view[offset + HEADER.size:end]))
    if lsn <= 0 or prev_lsn >= lsn or epoch <= 0 or (
            record_kind is RecordKind.FULL_PAGE and end - offset - HEADER.size != PAGE_SIZE_BYTES):
        _check_fields(record)  # raises, saying what is wrong (the length checks above cover the rest)
    return record, end


def encode_records(records: list[LogRecord]) -> bytes:
    return b"".join(encode_record(r) for r in records)


_NON_ZERO = re.compile(rb"[^\x00]")
# equal bytes longer than a patch header: a new patch is cheaper than bridging them
_PATCH_GAP = bytes(_PATCH.size + 1)


_SCAN_CHUNK = 256  # equal chunks are skipped with a memcmp each


def make_delta(old: bytes, new: bytes) -> bytes | None:
    """Patches turning `old` into `new`, or None when a full image is no larger.

    The differing bytes are found at C speed: equal chunks at both ends are skipped
    by comparing slices, the rest is XORed as big integers (the bit lengths give the
    first and last differing byte), then bytes.find() locates the equal stretches
    long enough to split a patch at; shorter ones are bridged (cheaper than a new
    header).
    """
    assert len(old) == len(new) == PAGE_SIZE_BYTES
    if old == new:
        return b""
    first = 0
    while old[first:first + _SCAN_CHUNK] == new[first:first + _SCAN_CHUNK]:
        first += _SCAN_CHUNK
    stop = PAGE_SIZE_BYTES
    while old[stop - _SCAN_CHUNK:stop] == new[stop - _SCAN_CHUNK:stop]:
        stop -= _SCAN_CHUNK
    # every difference is in [first, stop): diff[i] is page byte first + i
    width = stop - first
    xor = int.from_bytes(old[first:stop], "big") ^ int.from_bytes(new[first:stop], "big")
    start = width - (xor.bit_length() + 7) // 8          # the first differing byte
    last = width - ((xor & -xor).bit_length() - 1) // 8  # one past the last one
    diff = xor.to_bytes(width, "big")
    patches: list[bytes] = []
    size = 0
    while True:
        gap = diff.find(_PATCH_GAP, start, last)
        end = last if gap < 0 else gap
        patches.append(_PATCH.pack(first + start, end - start) + new[first + start:first + end])
        size += _PATCH.size + end - start
        if size >= PAGE_SIZE_BYTES:
            return None
        if gap < 0:
            return b"".join(patches)
        start = _NON_ZERO.search(diff, gap + len(_PATCH_GAP), last).start()


def apply_delta(old: bytes, delta: bytes) -> bytes:
    page = bytearray(old)
    _patch(page, delta)
    return bytes(page)


def _patch(page: bytearray, delta: bytes) -> None:
    offset = 0
    while offset < len(delta):
        if len(delta) - offset < _PATCH.size:
            raise RecordError("truncated delta patch header")
        start, length = _PATCH.unpack_from(delta, offset)
        offset += _PATCH.size
        if start + length > PAGE_SIZE_BYTES or offset + length > len(delta):
            raise RecordError("delta patch out of bounds")
        page[start:start + length] = delta[offset:offset + length]
        offset += length


EMPTY_PAGE = bytes(PAGE_SIZE_BYTES)


def apply_record(image: bytes | None, record: LogRecord) -> bytes | None:
    """The page image after `record` (None: the page does not exist)."""
    if record.kind is RecordKind.FULL_PAGE:
        return record.payload
    if record.kind is RecordKind.PAGE_DELTA:
        return apply_delta(image if image is not None else EMPTY_PAGE, record.payload)
    return image  # VOLUME_SIZE carries no page content


def apply_record_in_place(page: bytearray, record: LogRecord) -> None:
    """apply_record on a page being built up (start from EMPTY_PAGE when there is none):
    a run of records on one page then copies it once, not twice per record."""
    if record.kind is RecordKind.FULL_PAGE:
        page[:] = record.payload
    elif record.kind is RecordKind.PAGE_DELTA:
        _patch(page, record.payload)
