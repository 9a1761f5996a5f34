"""Builders for storage tests: valid record chains and Append requests."""

from __future__ import annotations

from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.epochs import Truncation
from sixfold.volume.records import (
    FLAG_CPL,
    PAGE_SIZE_BYTES,
    LogRecord,
    RecordKind,
    encode_records,
    make_delta,
)

VOLUME = "vol-test"


def page_image(fill: int, marker: bytes = b"") -> bytes:
    image = bytearray(bytes([fill % 256]) * PAGE_SIZE_BYTES)
    image[: len(marker)] = marker
    return bytes(image)


class ChainBuilder:
    """Builds records for one segment with correct backlinks; LSNs come from the caller
    (the LSN space is volume-wide, so a segment's LSNs need not be consecutive)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch
        self.prev_lsn = 0
        self.images: dict[int, bytes] = {}

    def full(self, lsn: int, page: int, image: bytes, cpl: bool = False) -> LogRecord:
        record = LogRecord(lsn, self.prev_lsn, self.epoch, page, RecordKind.FULL_PAGE, FLAG_CPL if cpl else 0, image)
        self.prev_lsn = lsn
        self.images[page] = image
        return record

    def change(self, lsn: int, page: int, image: bytes) -> LogRecord:
        """A delta when the page was seen before and a delta is smaller, else a full image."""
        old = self.images.get(page)
        delta = make_delta(old, image) if old is not None else None
        if delta is None:
            return self.full(lsn, page, image)
        record = LogRecord(lsn, self.prev_lsn, self.epoch, page, RecordKind.PAGE_DELTA, 0, delta)
        self.prev_lsn = lsn
        self.images[page] = image
        return record

    def size(self, lsn: int, pages: int) -> LogRecord:
        record = LogRecord(lsn, self.prev_lsn, self.epoch, pages, RecordKind.VOLUME_SIZE, 0, b"")
        self.prev_lsn = lsn
        return record


def append_request(
    batch_seq: int,
    segments: dict[int, list[LogRecord]],
    *,
    epoch: int = 1,
    writer: str = "writer-1",
    members: list[str] | None = None,
    volume_id: str = VOLUME,
    vdl_hint: int = 0,
    min_read_lsn: int = 0,
    truncations: tuple[Truncation, ...] = (),
) -> pb.AppendRequest:
    return pb.AppendRequest(
        batch_seq=batch_seq,
        volume_id=volume_id,
        volume_epoch=epoch,
        writer_id=writer,
        vdl_hint=vdl_hint,
        min_read_lsn=min_read_lsn,
        truncations=[pb.Truncation(epoch=t.epoch, start_lsn=t.start_lsn, baseline_lsn=t.baseline_lsn)
                     for t in truncations],
        segments=[
            pb.SegmentAppend(segment=s, records=encode_records(records), members=members or [])
            for s, records in segments.items()
        ],
    )
