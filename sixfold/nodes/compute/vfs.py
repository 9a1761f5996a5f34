"""The Sixfold VFS: SQLite's pager reads and writes pages of the shared volume.

Rules (DESIGN.md section 4), each found by breaking something:
1. No batch-atomic writes in apsw's SQLite: the writer's file buffers every page
   written in a transaction and publishes them as one unit.
2. Publish on SQLITE_FCNTL_COMMIT_PHASETWO, not on xSync.
3. journal_mode=MEMORY, cache_spill off on the writer.
4. The volume stamps page 1 (offsets 24 and 92) on every commit; xFileSize agrees
   with the page 1 of the version being read.
5. Snapshot connections use NORMAL locking: every read transaction takes a SHARED
   lock, and that is where the read point is pinned.
6. Page versions no reader needs are dropped (VolumeState.maintain).
"""

from __future__ import annotations

import threading

import apsw

from sixfold.nodes.compute.volume import VolumeState, WriterVolume, db_size_pages
from sixfold.volume.records import PAGE_SIZE_BYTES

SQLITE_FCNTL_COMMIT_PHASETWO = 22
SQLITE_LOCK_NONE = 0
SQLITE_LOCK_SHARED = 1
SQLITE_IOCAP_SAFE_APPEND = 0x200
SQLITE_IOCAP_SEQUENTIAL = 0x400
SQLITE_IOCAP_POWERSAFE_OVERWRITE = 0x1000
DB_NAME = "sixfold.db"


def _page_span(amount: int, offset: int) -> tuple[int, int]:
    page = offset // PAGE_SIZE_BYTES
    within = offset - page * PAGE_SIZE_BYTES
    if within + amount > PAGE_SIZE_BYTES:
        raise apsw.IOError(f"read of {amount} bytes at {offset} crosses a page boundary")
    return page, within


class _VolumeFile:
    """Common parts of the two file kinds."""

    def __init__(self, volume: VolumeState) -> None:
        self.volume = volume

    def xSectorSize(self) -> int:
        return PAGE_SIZE_BYTES

    def xDeviceCharacteristics(self) -> int:
        return SQLITE_IOCAP_SAFE_APPEND | SQLITE_IOCAP_SEQUENTIAL | SQLITE_IOCAP_POWERSAFE_OVERWRITE

    def xSync(self, flags: int) -> None:
        return None  # rule 2: durability comes with COMMIT_PHASETWO

    def xCheckReservedLock(self) -> bool:
        return False

    def xClose(self) -> None:
        return None


class BufferedWriteFile(_VolumeFile):
    """A transaction's page writes held in memory until COMMIT_PHASETWO publishes them
    (the single writer's file and a multi-writer node's)."""

    def __init__(self, volume) -> None:
        super().__init__(volume)
        self.dirty: dict[int, bytes] = {}
        self.size_bytes = 0
        self.last_commit_lsn: int | None = None

    def xWrite(self, data: bytes, offset: int) -> None:
        if offset % PAGE_SIZE_BYTES or len(data) != PAGE_SIZE_BYTES:
            raise apsw.IOError(f"write of {len(data)} bytes at {offset}: the volume takes whole {PAGE_SIZE_BYTES}-byte pages")
        self.dirty[offset // PAGE_SIZE_BYTES] = bytes(data)
        self.size_bytes = max(self.size_bytes, offset + PAGE_SIZE_BYTES)

    def xTruncate(self, newsize: int) -> None:
        self.size_bytes = newsize
        gone_from = (newsize + PAGE_SIZE_BYTES - 1) // PAGE_SIZE_BYTES
        for page in [p for p in self.dirty if p >= gone_from]:
            del self.dirty[page]


class WriterFile(BufferedWriteFile):
    """The writer connection's file: newest versions, a buffered transaction."""

    def __init__(self, volume: WriterVolume) -> None:
        super().__init__(volume)
        self.size_bytes = self._committed_size()

    def _committed_size(self) -> int:
        return db_size_pages(self.volume.read_newest(0)) * PAGE_SIZE_BYTES

    def xRead(self, amount: int, offset: int) -> bytes:
        page, within = _page_span(amount, offset)
        image = self.dirty.get(page)
        if image is None:
            if offset >= self.size_bytes:
                return b""  # SQLite zero-fills a short read
            image = self.volume.read_newest(page)
            if image is None:
                return b""
        return image[within:within + amount]

    def xFileSize(self) -> int:
        return self.size_bytes

    def xLock(self, level: int) -> None:
        return None  # one writer connection per node; snapshots never block on it

    def xUnlock(self, level: int) -> None:
        return None

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op == SQLITE_FCNTL_COMMIT_PHASETWO:
            writes, self.dirty = self.dirty, {}
            if writes:
                self.last_commit_lsn = self.volume.publish(writes)
            self.size_bytes = self._committed_size()
            return True
        return False

    def take_commit_lsn(self) -> int | None:
        lsn, self.last_commit_lsn = self.last_commit_lsn, None
        return lsn

    def discard(self) -> None:
        """Forgets page writes of a transaction that rolled back."""
        self.dirty = {}
        self.size_bytes = self._committed_size()


class SnapshotFile(_VolumeFile):
    """A read-only connection's file: every read transaction sees one read point."""

    def __init__(self, volume: VolumeState) -> None:
        super().__init__(volume)
        self.pin: int | None = None
        self.read_lsn = 0

    def _ensure_pinned(self) -> None:
        if self.pin is None:
            self.pin, self.read_lsn = self.volume.pin()

    def xLock(self, level: int) -> None:
        if level >= SQLITE_LOCK_SHARED:
            self._ensure_pinned()  # rule 5: the read point is pinned with the SHARED lock

    def xUnlock(self, level: int) -> None:
        if level == SQLITE_LOCK_NONE and self.pin is not None:
            self.volume.unpin(self.pin)
            self.pin = None

    def _read_point(self) -> int:
        # Outside a read transaction (SQLite reads the header and the size before it locks)
        # the newest read point serves without a pin: a pin taken here would never be
        # released (no xUnlock follows), and would hold back storage GC for good.
        return self.read_lsn if self.pin is not None else self.volume.read_lsn

    def xRead(self, amount: int, offset: int) -> bytes:
        page, within = _page_span(amount, offset)
        image = self.volume.read_at(page, self._read_point())
        if image is None:
            return b""
        return image[within:within + amount]

    def xFileSize(self) -> int:
        return db_size_pages(self.volume.page1_at(self._read_point())) * PAGE_SIZE_BYTES

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("this connection reads a snapshot of the volume; it cannot write")

    def xTruncate(self, newsize: int) -> None:
        raise apsw.ReadOnlyError("this connection reads a snapshot of the volume; it cannot write")

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xClose(self) -> None:
        if self.pin is not None:
            self.volume.unpin(self.pin)
            self.pin = None


class SixfoldVFS(apsw.VFS):
    """Registers under a per-node name; the database file is the volume."""

    _names = iter(range(1, 1 << 62))
    _lock = threading.Lock()

    def __init__(self, volume: VolumeState, writer: bool) -> None:
        with SixfoldVFS._lock:
            self.vfs_name = f"sixfold-{next(SixfoldVFS._names)}"
        self.volume = volume
        self.writer = writer
        self.writer_file: WriterFile | None = None
        super().__init__(self.vfs_name, base="")

    def xOpen(self, name, flags):
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        if filename is not None and str(filename).endswith(DB_NAME):
            readonly = bool(flags[0] & apsw.SQLITE_OPEN_READONLY)
            if self.writer and not readonly:
                assert self.writer_file is None, "one writer connection per node"
                self.writer_file = WriterFile(self.volume)  # type: ignore[arg-type]
                return self.writer_file
            return SnapshotFile(self.volume)
        return apsw.VFSFile("", name, flags)  # temp files and the like: local

    def xAccess(self, pathname: str, flags: int) -> bool:
        if DB_NAME in pathname:
            # the volume always exists; its journals never do (journal_mode=MEMORY)
            return pathname.endswith(DB_NAME)
        return super().xAccess(pathname, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if DB_NAME in filename:
            return None
        return super().xDelete(filename, syncdir)

    def xFullPathname(self, name: str) -> str:
        if name.endswith(DB_NAME):
            return "/" + DB_NAME
        return super().xFullPathname(name)
