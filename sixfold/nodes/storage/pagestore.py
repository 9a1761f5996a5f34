"""The local page-version store: SQLite (WAL, synchronous=FULL).

Why SQLite: it is in the standard library, transactional and crash-safe, and
gives indexed range lookups by (segment, page, lsn) for free. It is not on the
acknowledgement path (the log is): the materialiser writes here in the
background, one transaction per batch, so its fsyncs cost no commit latency.

Tables: `versions` (one full page image per record that touched a page),
`records` (every held record, so FetchRecords can serve old ones after their
log file is gone), `segments` (replica metadata and GC horizons) and
`checkpoint` (the log position up to which everything is in this store).

A record's epoch is in its `records` row and in the `versions` row made from
it: truncations void both by epoch. When a replica upgrades a record's epoch
(a recovery re-stamped it), the batch's `restamp` rewrites both, before the
batch's truncations are applied. A truncation (E, S, B) also deletes the rows of
old copies in (B, S] (epoch < E) above the materialised point: memory dropped
them (not current, sixfold/volume/epochs.py). Materialised records keep their
rows and versions unless void.

Blocking API: the node calls the write methods from one writer thread and the
read methods from reader threads (one connection per thread).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sixfold.nodes.storage.codec import meta_from_json, meta_to_json
from sixfold.nodes.storage.log import LogPosition
from sixfold.nodes.storage.replica import Incoming, Meta, record_crc
from sixfold.volume.epochs import Truncation
from sixfold.volume.records import EMPTY_PAGE, PAGE_SIZE_BYTES, LogRecord, RecordKind, apply_record_in_place

LSN_MAX = 2**63 - 1  # SQLite integers are signed 64-bit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
  volume TEXT NOT NULL, segment INTEGER NOT NULL, meta TEXT NOT NULL,
  vdl_hint INTEGER NOT NULL, min_read_lsn INTEGER NOT NULL, materialised_lsn INTEGER NOT NULL,
  records_gc_lsn INTEGER NOT NULL, oldest_version_lsn INTEGER NOT NULL,
  PRIMARY KEY (volume, segment));
CREATE TABLE IF NOT EXISTS records (
  volume TEXT NOT NULL, segment INTEGER NOT NULL, lsn INTEGER NOT NULL,
  epoch INTEGER NOT NULL, crc INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (volume, segment, lsn));
CREATE TABLE IF NOT EXISTS versions (
  volume TEXT NOT NULL, segment INTEGER NOT NULL, page INTEGER NOT NULL, lsn INTEGER NOT NULL,
  epoch INTEGER NOT NULL, image BLOB NOT NULL,
  PRIMARY KEY (volume, segment, page, lsn));
CREATE TABLE IF NOT EXISTS checkpoint (
  id INTEGER PRIMARY KEY CHECK (id = 1), file_no INTEGER NOT NULL, offset INTEGER NOT NULL);
"""


@dataclass(slots=True)
class SegmentRow:
    volume_id: str
    segment: int
    meta: Meta
    vdl_hint: int = 0
    min_read_lsn: int = 0
    materialised_lsn: int = 0
    records_gc_lsn: int = 0
    oldest_version_lsn: int = 0


@dataclass(slots=True)
class LoadedSegment:
    row: SegmentRow
    unmaterialised: list[bytes]                 # encoded records above materialised_lsn, ascending
    # (lsns, crcs, epochs) of materialised records still stored
    materialised: tuple[list[int], list[int], list[int]]


@dataclass(slots=True)
class SegmentBatch:
    row: SegmentRow                              # saved as is (materialised_lsn: after this batch)
    records: list[tuple[int, int, int, bytes]]   # (lsn, epoch, crc, encoded) to store
    materialise: list[LogRecord]                 # ascending, contiguous in the chain, all stored
    void: tuple[Truncation, ...] = ()            # truncations new since the last save (void, and stale copies)
    # a version whose successor (same page, this batch) is at or below this LSN is not
    # written: no reader may read below it, so GC would drop that version right away
    skip_below_lsn: int = 0
    # upgraded copies of stored records (lsn, epoch, crc, encoded): the records row and
    # the page version made from it take the new epoch (applied before `void`)
    restamp: list[tuple[int, int, int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class StoreBatch:
    segments: list[SegmentBatch]
    checkpoint: LogPosition


@dataclass(slots=True)
class CommitResult:
    versions_written: int = 0
    records_written: int = 0
    records_restamped: int = 0
    versions_restamped: int = 0
    versions_voided: dict[tuple[str, int], int] = field(default_factory=dict)


class PageStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # --------------------------------------------------------------- startup

    def load(self) -> tuple[LogPosition, list[LoadedSegment]]:
        db = self._writer
        row = db.execute("SELECT file_no, offset FROM checkpoint WHERE id = 1").fetchone()
        checkpoint = LogPosition(row[0], row[1]) if row else LogPosition(1, 0)
        loaded = []
        for volume, segment, meta_json, vdl, mrl, mat, rgc, ovl in db.execute(
            "SELECT volume, segment, meta, vdl_hint, min_read_lsn, materialised_lsn, records_gc_lsn,"
            " oldest_version_lsn FROM segments ORDER BY volume, segment"
        ).fetchall():
            meta = meta_from_json(json.loads(meta_json))[0]
            seg_row = SegmentRow(volume, segment, meta, vdl, mrl, mat, rgc, ovl)
            unmaterialised = [
                data
                for (data,) in db.execute(
                    "SELECT data FROM records WHERE volume = ? AND segment = ? AND lsn > ? ORDER BY lsn",
                    (volume, segment, mat),
                )
            ]
            lsns, crcs, epochs = [], [], []
            for lsn, crc, epoch in db.execute(
                "SELECT lsn, crc, epoch FROM records WHERE volume = ? AND segment = ? AND lsn <= ? ORDER BY lsn",
                (volume, segment, mat),
            ):
                lsns.append(lsn)
                crcs.append(crc)
                epochs.append(epoch)
            loaded.append(LoadedSegment(seg_row, unmaterialised, (lsns, crcs, epochs)))
        return checkpoint, loaded

    # ---------------------------------------------------------------- writer

    def commit(self, batch: StoreBatch) -> CommitResult:
        """One transaction: records, page versions, metadata and the log checkpoint."""
        result = CommitResult()
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            for seg in batch.segments:
                self._commit_segment(db, seg, result)
            db.execute(
                "INSERT OR REPLACE INTO checkpoint (id, file_no, offset) VALUES (1, ?, ?)",
                (batch.checkpoint.file_no, batch.checkpoint.offset),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def _commit_segment(self, db: sqlite3.Connection, seg: SegmentBatch, result: CommitResult) -> None:
        r = seg.row
        key = (r.volume_id, r.segment)
        # REPLACE: a row left at this LSN is a copy that memory no longer holds -- one
        # voided in memory (its DELETE below may come in this very batch, and must not
        # take the new record with it) or an older-epoch copy of this one
        db.executemany(
            "INSERT OR REPLACE INTO records (volume, segment, lsn, epoch, crc, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(r.volume_id, r.segment, lsn, epoch, crc, data) for lsn, epoch, crc, data in seg.records],
        )
        result.records_written += len(seg.records)
        # upgrades before the truncations: a copy valid only under its new epoch must survive them
        if seg.restamp:
            result.records_restamped += db.executemany(
                "UPDATE records SET epoch = ?, crc = ?, data = ? WHERE volume = ? AND segment = ? AND lsn = ?"
                " AND epoch < ?",
                [(epoch, crc, data, r.volume_id, r.segment, lsn, epoch) for lsn, epoch, crc, data in seg.restamp],
            ).rowcount
            result.versions_restamped += db.executemany(
                "UPDATE versions SET epoch = ? WHERE volume = ? AND segment = ? AND lsn = ? AND epoch < ?",
                [(epoch, r.volume_id, r.segment, lsn, epoch) for lsn, epoch, _, _ in seg.restamp],
            ).rowcount
        for t in seg.void:
            db.execute(
                "DELETE FROM records WHERE volume = ? AND segment = ? AND lsn > ? AND epoch < ?",
                (r.volume_id, r.segment, t.start_lsn, t.epoch),
            )
            # old copies, not current: dropped in memory, never materialised (rows at or
            # below the materialised point stay: a page version was made from them)
            stale_above = max(t.baseline_lsn, r.materialised_lsn)
            if stale_above < t.start_lsn:
                db.execute(
                    "DELETE FROM records WHERE volume = ? AND segment = ? AND lsn > ? AND lsn <= ? AND epoch < ?",
                    (r.volume_id, r.segment, stale_above, t.start_lsn, t.epoch),
                )
            voided = db.execute(
                "DELETE FROM versions WHERE volume = ? AND segment = ? AND lsn > ? AND epoch < ?",
                (r.volume_id, r.segment, t.start_lsn, t.epoch),
            ).rowcount
            if voided:
                result.versions_voided[key] = result.versions_voided.get(key, 0) + voided
        result.versions_written += self._materialise(db, r.volume_id, r.segment, seg.materialise, seg.skip_below_lsn)
        db.execute(
            "INSERT OR REPLACE INTO segments (volume, segment, meta, vdl_hint, min_read_lsn, materialised_lsn,"
            " records_gc_lsn, oldest_version_lsn) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.volume_id, r.segment, json.dumps(meta_to_json(r.meta, r.vdl_hint, r.min_read_lsn)),
                r.vdl_hint, r.min_read_lsn, r.materialised_lsn, r.records_gc_lsn, r.oldest_version_lsn,
            ),
        )

    @staticmethod
    def _materialise(
        db: sqlite3.Connection, volume_id: str, segment: int, records: list[LogRecord], skip_below_lsn: int
    ) -> int:
        """Applies records page by page on top of each page's newest version."""
        by_page: dict[int, list[LogRecord]] = {}
        for record in records:
            if record.kind is not RecordKind.VOLUME_SIZE:
                by_page.setdefault(record.page, []).append(record)
        rows = []
        for page, page_records in by_page.items():
            found = db.execute(
                "SELECT lsn, image FROM versions WHERE volume = ? AND segment = ? AND page = ?"
                " ORDER BY lsn DESC LIMIT 1",
                (volume_id, segment, page),
            ).fetchone()
            assert found is None or found[0] < page_records[0].lsn, "materialising below an existing version"
            image = bytearray(found[1] if found else EMPTY_PAGE)
            for i, record in enumerate(page_records):
                apply_record_in_place(image, record)
                assert len(image) == PAGE_SIZE_BYTES
                superseded = i + 1 < len(page_records) and page_records[i + 1].lsn <= skip_below_lsn
                if not superseded:
                    rows.append((volume_id, segment, page, record.lsn, record.epoch, bytes(image)))
        db.executemany(
            "INSERT OR REPLACE INTO versions (volume, segment, page, lsn, epoch, image) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        return len(rows)

    def gc(self, volume_id: str, segment: int, version_horizon_lsn: int, records_floor_lsn: int) -> tuple[int, int]:
        """Drops page versions older than each page's newest version at or below the
        horizon (never that one), and records below the floor. Returns the counts."""
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            versions = db.execute(
                "DELETE FROM versions WHERE volume = ?1 AND segment = ?2 AND lsn < ?3 AND lsn < ("
                " SELECT MAX(w.lsn) FROM versions AS w WHERE w.volume = ?1 AND w.segment = ?2"
                " AND w.page = versions.page AND w.lsn <= ?3)",
                (volume_id, segment, version_horizon_lsn),
            ).rowcount
            records = db.execute(
                "DELETE FROM records WHERE volume = ? AND segment = ? AND lsn < ?",
                (volume_id, segment, records_floor_lsn),
            ).rowcount
            db.execute(
                "UPDATE segments SET oldest_version_lsn = MAX(oldest_version_lsn, ?),"
                " records_gc_lsn = MAX(records_gc_lsn, ?) WHERE volume = ? AND segment = ?",
                (version_horizon_lsn, records_floor_lsn, volume_id, segment),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return versions, records

    def install_snapshot(self, row: SegmentRow, pages: list[tuple[int, int, int, bytes]]) -> None:
        """Seeds a joining replica: its page versions become `pages` (page, lsn, epoch, image)
        as of row.materialised_lsn; records at or below it go (the images hold them)."""
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM versions WHERE volume = ? AND segment = ?", (row.volume_id, row.segment))
            db.execute("DELETE FROM records WHERE volume = ? AND segment = ? AND lsn <= ?",
                       (row.volume_id, row.segment, row.materialised_lsn))
            db.executemany(
                "INSERT INTO versions (volume, segment, page, lsn, epoch, image) VALUES (?, ?, ?, ?, ?, ?)",
                [(row.volume_id, row.segment, page, lsn, epoch, image) for page, lsn, epoch, image in pages],
            )
            db.execute(
                "INSERT OR REPLACE INTO segments (volume, segment, meta, vdl_hint, min_read_lsn, materialised_lsn,"
                " records_gc_lsn, oldest_version_lsn) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row.volume_id, row.segment, json.dumps(meta_to_json(row.meta, row.vdl_hint, row.min_read_lsn)),
                 row.vdl_hint, row.min_read_lsn, row.materialised_lsn, row.records_gc_lsn, row.oldest_version_lsn),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- reads

    def read_pages_at(self, volume_id: str, segment: int, at_lsn: int, from_page: int,
                      max_pages: int) -> list[tuple[int, int, int, bytes]]:
        """(page, lsn, epoch, image) of the newest version <= at_lsn of each page >= from_page."""
        return self._reader().execute(
            "SELECT page, lsn, epoch, image FROM versions AS v WHERE volume = ?1 AND segment = ?2 AND page >= ?3"
            " AND lsn = (SELECT MAX(w.lsn) FROM versions AS w WHERE w.volume = ?1 AND w.segment = ?2"
            " AND w.page = v.page AND w.lsn <= ?4) ORDER BY page LIMIT ?5",
            (volume_id, segment, from_page, min(at_lsn, LSN_MAX), max_pages),
        ).fetchall()

    def read_version(self, volume_id: str, segment: int, page: int, max_lsn: int) -> tuple[int, bytes] | None:
        """The newest version of a page with lsn <= max_lsn."""
        found = self._reader().execute(
            "SELECT lsn, image FROM versions WHERE volume = ? AND segment = ? AND page = ? AND lsn <= ?"
            " ORDER BY lsn DESC LIMIT 1",
            (volume_id, segment, page, min(max_lsn, LSN_MAX)),
        ).fetchone()
        if found is None:
            return None
        assert len(found[1]) == PAGE_SIZE_BYTES, f"page {page} version {found[0]} has {len(found[1])} bytes"
        return found[0], found[1]

    def read_records(
        self, volume_id: str, segment: int, after_lsn: int, up_to_lsn: int, max_records: int
    ) -> list[tuple[int, bytes]]:
        return self._reader().execute(
            "SELECT lsn, data FROM records WHERE volume = ? AND segment = ? AND lsn > ? AND lsn <= ?"
            " ORDER BY lsn LIMIT ?",
            (volume_id, segment, after_lsn, min(up_to_lsn, LSN_MAX), max_records),
        ).fetchall()

    def page_versions(self, volume_id: str, segment: int, page: int) -> list[int]:
        """For tests and tools: the LSNs of a page's retained versions."""
        return [
            lsn
            for (lsn,) in self._reader().execute(
                "SELECT lsn FROM versions WHERE volume = ? AND segment = ? AND page = ? ORDER BY lsn",
                (volume_id, segment, page),
            )
        ]

    def count(self, table: str, volume_id: str, segment: int) -> int:
        assert table in ("records", "versions")
        return self._reader().execute(
            f"SELECT COUNT(*) FROM {table} WHERE volume = ? AND segment = ?", (volume_id, segment)
        ).fetchone()[0]


def rows_for(records: Iterable[Incoming]) -> list[tuple[int, int, int, bytes]]:
    """Record-table rows (lsn, epoch, crc, encoded) for records to store."""
    return [(r.lsn, r.epoch, record_crc(enc), enc) for r, enc in records]
