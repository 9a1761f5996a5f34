"""Multi-writer conflict decisions, as pure state machines (no I/O).

See sixfold/nodes/compute/MULTIWRITER.md. The adjudicator (on the primary writer)
decides every commit of every writer, in LSN order:

- `ConflictTable`: the LSN of the newest commit that wrote each page; a transaction
  with read point S conflicts iff one of the pages it wrote was written above S.
- `merge_page1`: page 0 of the volume is SQLite's page 1; every commit writes it, so
  it is merged field by field instead of versioned as a whole.

Page numbers here are the volume's (offset // 4096): page 0 is SQLite's page 1.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_BYTES = 100
FIELD_BYTES = 4
# stamped by the adjudicator on every commit (DESIGN.md section 4, rule 4): never compared
STAMPED_FIELD_OFFSETS = frozenset({24, 92})
SCHEMA_COOKIE_OFFSET = 40
HEADER_FIELD_OFFSETS = tuple(o for o in range(0, HEADER_BYTES, FIELD_BYTES) if o not in STAMPED_FIELD_OFFSETS)
TABLE_PAGES_MAX_DEFAULT = 200_000


@dataclass(frozen=True, slots=True)
class Conflict:
    """Why a commit lost: the pages (or page-0 parts) and the newest LSN that changed them.
    The loser must see `winner_lsn` (its redo view must reach it) before it retries."""
    pages: tuple[int, ...]
    winner_lsn: int
    reason: str


def _field(image: bytes, offset: int) -> bytes:
    return image[offset:offset + FIELD_BYTES]


def merge_page1(current: bytes, base: bytes, mine: bytes) -> bytes | str:
    """SQLite's page 1 after applying what this transaction changed (base -> mine) on top
    of the newest committed page 1 (`current`). Returns the merged image, or the reason it
    conflicts (str).

    - header fields (4-byte words, except the stamped change counter and version-valid-for):
      a field the transaction changed must still hold, in `current`, the value it read;
    - the schema cookie is also a read dependency: a transaction that read an older schema
      must not commit (it may have written into a table dropped since);
    - the body (the sqlite_schema root page) changes as a whole: if the transaction changed
      it, nobody else may have since it read.
    """
    assert len(current) == len(base) == len(mine), "page images have one size"
    if _field(current, SCHEMA_COOKIE_OFFSET) != _field(base, SCHEMA_COOKIE_OFFSET):
        return "the schema changed since this transaction read it"
    out = bytearray(current)
    for offset in HEADER_FIELD_OFFSETS:
        read, written = _field(base, offset), _field(mine, offset)
        if read == written:
            continue
        if _field(current, offset) != read:
            return f"database header field at offset {offset} changed concurrently"
        out[offset:offset + FIELD_BYTES] = written
    if mine[HEADER_BYTES:] != base[HEADER_BYTES:]:
        if current[HEADER_BYTES:] != base[HEADER_BYTES:]:
            return "the schema table (page 1) changed concurrently"
        out[HEADER_BYTES:] = mine[HEADER_BYTES:]
    return bytes(out)


class ConflictTable:
    """page -> LSN of the newest commit that wrote it, above a floor.

    A page absent from the table counts as written at `floor_lsn`: a transaction whose read
    point is below the floor conflicts on every page (safe after a restart or a prune)."""

    def __init__(self, floor_lsn: int, pages_max: int = TABLE_PAGES_MAX_DEFAULT) -> None:
        assert pages_max >= 2
        self.floor_lsn = floor_lsn
        self.pages_max = pages_max
        self._last_write: dict[int, int] = {}
        self.newest_lsn = floor_lsn

    def __len__(self) -> int:
        return len(self._last_write)

    def last_write(self, page: int) -> int:
        return self._last_write.get(page, self.floor_lsn)

    def conflicts(self, read_lsn: int, pages) -> tuple[list[int], int]:
        """(pages written above read_lsn, the newest LSN among them; 0 if none)."""
        hit = []
        newest = 0
        for page in pages:
            lsn = self._last_write.get(page, self.floor_lsn)
            if lsn > read_lsn:
                hit.append(page)
                newest = max(newest, lsn)
        return hit, newest

    def record(self, commit_lsn: int, pages) -> None:
        assert commit_lsn > self.newest_lsn, "commits are recorded in LSN order"
        self.newest_lsn = commit_lsn
        for page in pages:
            self._last_write[page] = commit_lsn
        if len(self._last_write) > self.pages_max:
            self._prune()

    def _prune(self) -> None:
        """Forget the older half; the floor rises to the newest LSN forgotten."""
        ordered = sorted(self._last_write.values())
        cut = ordered[len(ordered) - self.pages_max // 2 - 1]
        self._last_write = {p: lsn for p, lsn in self._last_write.items() if lsn > cut}
        self.floor_lsn = max(self.floor_lsn, cut)


@dataclass(frozen=True, slots=True)
class CommitRequest:
    read_lsn: int                      # the transaction's snapshot
    pages: dict[int, bytes]            # changed pages other than page 0 (new images)
    page0_base: bytes | None           # page 0 as read at read_lsn (None: the database was empty)
    page0_mine: bytes | None           # page 0 as the transaction wrote it (None: not written)


class Adjudicator:
    """Decides commits in order. The shell calls `decide`, issues the accepted commit with
    the merged page 0 (allocating its LSN), then `accepted(lsn, pages)` before deciding
    anything else (the same lock), so that LSN order is decision order."""

    def __init__(self, floor_lsn: int, pages_max: int = TABLE_PAGES_MAX_DEFAULT) -> None:
        self.table = ConflictTable(floor_lsn, pages_max)
        self.commits = 0
        self.conflicts = 0

    def decide(self, request: CommitRequest, current_page0: bytes | None) -> bytes | None | Conflict:
        """The page 0 to issue with the commit (None: page 0 untouched), or a Conflict.

        Schema changes are serialised against everything: page-level write conflicts do not
        cover what a statement *read* through the schema (CREATE INDEX reads the whole table
        and writes only new pages; an INSERT compiled before it writes only a table page),
        so every writing transaction depends on the schema cookie it read, and a transaction
        that changes the cookie commits only if nothing at all committed since its snapshot.
        """
        pages, winner = self.table.conflicts(request.read_lsn, request.pages)
        if pages:
            self.conflicts += 1
            return Conflict(tuple(sorted(pages)), winner, f"page(s) {sorted(pages)[:8]} changed since LSN "
                                                          f"{request.read_lsn} (by LSN {winner})")
        base, mine = request.page0_base, request.page0_mine
        if base is not None and current_page0 is not None and \
                _field(current_page0, SCHEMA_COOKIE_OFFSET) != _field(base, SCHEMA_COOKIE_OFFSET):
            self.conflicts += 1
            return Conflict((0,), self.table.last_write(0), "the schema changed since this transaction read it")
        if base is not None and mine is not None and self.table.newest_lsn > request.read_lsn and \
                _field(mine, SCHEMA_COOKIE_OFFSET) != _field(base, SCHEMA_COOKIE_OFFSET):
            self.conflicts += 1
            return Conflict((0,), self.table.newest_lsn,
                            "a schema change commits only when nothing else committed since its snapshot")
        if mine is None:
            return None
        if request.page0_base is None or current_page0 is None:
            # creating the database: only one writer may, and only while nobody else has
            if current_page0 is not None or self.table.last_write(0) > request.read_lsn:
                self.conflicts += 1
                return Conflict((0,), self.table.last_write(0), "the database was created concurrently")
            return request.page0_mine
        merged = merge_page1(current_page0, request.page0_base, request.page0_mine)
        if isinstance(merged, str):
            self.conflicts += 1
            return Conflict((0,), self.table.last_write(0), merged)
        return merged

    def accepted(self, commit_lsn: int, pages) -> None:
        self.commits += 1
        self.table.record(commit_lsn, [0, *pages])
