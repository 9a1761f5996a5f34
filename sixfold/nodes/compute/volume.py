"""The compute node's view of the volume: a page cache over the quorum client.

SQLite's VFS calls are synchronous and come from SQL threads; the quorum client
is asyncio. VolumeState owns one event-loop thread for the client and offers
the VFS what it needs: the newest image of a page (the writer's own view),
the image at a pinned read point (snapshots), publishing a transaction, and
the pins that keep page versions alive (here and, through min_read_lsn, on
storage).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import threading
import time
from concurrent.futures import Future

from sixfold.client.errors import ReadUnavailableError
from sixfold.client.quorum import ClientSettings, PageWrite, QuorumClient
from sixfold.nodes.compute.pagecache import PageCache
from sixfold.nodes.compute.redo import LagWindow
from sixfold.volume.placement import StorageNodeInfo, segment_of_page
from sixfold.volume.tails import SegmentTails
from sixfold.volume.records import PAGE_SIZE_BYTES

log = logging.getLogger(__name__)

FOLLOW_WAIT_S = 10.0

# SQLite database header fields (page 1), big-endian u32
HEADER_CHANGE_COUNTER = 24
HEADER_DB_SIZE_PAGES = 28
HEADER_VERSION_VALID_FOR = 92


def header_u32(page1: bytes | None, offset: int) -> int:
    if page1 is None:
        return 0
    return struct.unpack_from(">I", page1, offset)[0]


def db_size_pages(page1: bytes | None) -> int:
    """The database size a reader of this page 1 must see (0: empty database)."""
    if page1 is None:
        return 0
    return header_u32(page1, HEADER_DB_SIZE_PAGES)


def stamp_page1(page1: bytes, counter: int) -> bytes:
    """Rule 4: every commit changes the change counter and version-valid-for together,
    so every reader's pager notices a new version (SQLite stops bumping them itself in
    exclusive locking mode), and the in-header database size stays valid."""
    image = bytearray(page1)
    struct.pack_into(">I", image, HEADER_CHANGE_COUNTER, counter & 0xFFFFFFFF)
    struct.pack_into(">I", image, HEADER_VERSION_VALID_FOR, counter & 0xFFFFFFFF)
    return bytes(image)


class LoopThread:
    """An asyncio loop on its own daemon thread; run(coro) waits for the result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro, timeout_s: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    def is_current(self) -> bool:
        """True on the loop's own thread, which must never wait for I/O."""
        return threading.get_ident() == self._thread.ident


class WouldBlock(Exception):
    """A read on the loop thread missed the cache: it must run again on another thread."""


class VolumeState:
    """Shared by every SQLite file object of one compute node."""

    def __init__(self, client: QuorumClient, loop: LoopThread, cache_pages: int = 20_000) -> None:
        self.client = client
        self.loop = loop
        self.lock = threading.Lock()
        self.read_lsn_moved = threading.Condition(self.lock)   # a reader's read_lsn advanced (forwarding waits)
        self.cache = PageCache(capacity_pages=cache_pages)
        self.read_lsn = 0            # newest snapshot point: VDL on the writer, received VDL on a reader
        self.issued_lsn = 0          # the writer's newest published transaction
        self._pins: dict[int, int] = {}
        self._pin_ids = itertools.count(1)
        self.commit_counter = 0

    def wait_read_lsn(self, lsn: int, timeout_s: float) -> bool:
        """True once read_lsn >= lsn (a reader: the redo stream brought it); False after timeout_s."""
        with self.read_lsn_moved:
            return self.read_lsn_moved.wait_for(lambda: self.read_lsn >= lsn, timeout=timeout_s)

    # --- pins -----------------------------------------------------------------------
    def pin(self) -> tuple[int, int]:
        with self.lock:
            pin = next(self._pin_ids)
            self._pins[pin] = self.read_lsn
            return pin, self.read_lsn

    def unpin(self, pin: int) -> None:
        with self.lock:
            self._pins.pop(pin, None)

    def min_pinned_lsn(self) -> int:
        with self.lock:
            return min(self._pins.values(), default=self.read_lsn)

    # --- reads ----------------------------------------------------------------------
    def read_at(self, page: int, lsn: int) -> bytes | None:
        with self.lock:
            hit, image = self.cache.read(page, lsn)
        if hit:
            return image
        if self.loop.is_current():
            raise WouldBlock(f"page {page} at LSN {lsn} is not cached")
        image, page_lsn = self._fetch(page, lsn)
        with self.lock:
            self.cache.insert_fetched(page, lsn, page_lsn, image)
        return image

    def read_newest(self, page: int) -> bytes | None:
        """The writer's view: its own newest version (durable or not)."""
        with self.lock:
            hit, image = self.cache.newest(page)
            read_lsn = self.read_lsn
        if hit:
            return image
        # not cached means no version newer than VDL exists: storage at VDL has it
        image, page_lsn = self._fetch(page, read_lsn)
        with self.lock:
            if not self.cache.insert_fetched(page, read_lsn, page_lsn, image):
                hit, cached = self.cache.newest(page)
                if hit:
                    return cached
        return image

    def _fetch(self, page: int, lsn: int) -> tuple[bytes | None, int]:
        image = self.loop.run(self.client.read_page(page, lsn))
        return image, lsn

    def page1_at(self, lsn: int) -> bytes | None:
        return self.read_at(0, lsn)


class WriterVolume(VolumeState):
    """The writer's volume: recovery on open, publishing transactions, VDL as read point."""

    @classmethod
    def open(cls, nodes: list[StorageNodeInfo], writer_id: str, settings: ClientSettings,
             cache_pages: int = 20_000, loop: LoopThread | None = None, min_epoch: int = 0) -> "WriterVolume":
        """Runs recovery (a new volume epoch). `loop`: a promoted reader passes its own
        loop, which also runs its gRPC server; call this from another thread."""
        loop = loop or LoopThread(f"volume-{writer_id}")
        client = QuorumClient(nodes, writer_id, settings)
        recovered = loop.run(client.open_writer(min_epoch))
        volume = cls(client, loop, cache_pages)
        volume.read_lsn = volume.issued_lsn = recovered.vdl
        volume.cache.reset(recovered.vdl)
        client.add_vdl_listener(volume._on_vdl)
        page1 = volume.read_newest(0)
        volume.commit_counter = header_u32(page1, HEADER_CHANGE_COUNTER)
        return volume

    def _on_vdl(self, vdl: int) -> None:  # on the loop thread
        with self.lock:
            self.read_lsn = max(self.read_lsn, vdl)

    def publish(self, writes: dict[int, bytes]) -> int | None:
        """Issues one transaction's changed pages (plus the stamped page 1).

        Returns the commit LSN, or None when nothing changed. Called with the
        SQLite write lock held; durability is awaited later, without it.
        """
        changes: list[PageWrite] = []
        page1 = writes.get(0)
        if page1 is None:
            page1 = self.read_newest(0)
        if page1 is None:
            # SQLite writes page 1 in the transaction that creates the database
            raise AssertionError("a transaction wrote pages but page 1 of the database does not exist")
        for page, image in sorted(writes.items()):
            if page == 0:
                continue
            base = self.read_newest(page)
            if image != base:
                changes.append(PageWrite(page, image, base))
        if not changes and writes.get(0) in (None, self.read_newest(0)):
            return None
        self.commit_counter += 1
        stamped = stamp_page1(page1, self.commit_counter)
        changes.insert(0, PageWrite(0, stamped, self.read_newest(0)))
        lsn = self.client.issue_from_thread(changes)
        with self.lock:
            for change in changes:
                self.cache.put_version(change.page, lsn, change.image)
            self.issued_lsn = lsn
        return lsn

    def maintain(self) -> None:
        """Prunes versions no pinned read needs and evicts cold pages (rule 6)."""
        floor = self.min_pinned_lsn()
        with self.lock:
            self.cache.prune(floor)
            self.cache.evict(keep_above_lsn=self.read_lsn)

    def close(self) -> None:
        try:
            self.loop.run(self.client.close(), timeout_s=10)
        finally:
            self.loop.stop()


class ReaderVolume(VolumeState):
    """A reader's volume: fed by the writer's redo stream, reads at the received VDL."""

    @classmethod
    def open(cls, nodes: list[StorageNodeInfo], reader_id: str, settings: ClientSettings,
             cache_pages: int = 20_000) -> "ReaderVolume":
        loop = LoopThread(f"volume-{reader_id}")
        client = QuorumClient(nodes, reader_id, settings)
        volume = cls(client, loop, cache_pages)
        volume.lag = LagWindow()
        volume.subscribed = threading.Event()
        volume.writer_id = ""
        volume.tails = SegmentTails()
        volume.pages_per_segment = settings.pages_per_segment
        return volume

    def _fetch(self, page: int, lsn: int) -> tuple[bytes | None, int]:
        if not self.subscribed.wait(FOLLOW_WAIT_S):
            raise ReadUnavailableError(
                f"this reader is not following the writer's redo stream (waited {FOLLOW_WAIT_S:.0f} s); "
                "it cannot know what is committed. Check that the writer is up.")
        with self.lock:
            required = self.tails.at(segment_of_page(page, self.pages_per_segment), lsn)
        image = self.loop.run(self.client.read_page(page, lsn, required_scl=required))
        return image, lsn

    def start_following(self, first_lsn: int, vdl: int, epoch: int, writer_id: str,
                        segment_tails: dict[int, int], segment_members: dict[int, tuple[str, ...]]) -> None:
        """A (re)subscription: the history this node can apply starts at first_lsn."""
        self.client.follow_members(segment_members)
        with self.lock:
            self.tails = SegmentTails(segment_tails)
            self.cache.reset(first_lsn)
            self.read_lsn = vdl
            self.client.epoch = epoch
            self.writer_id = writer_id
            self.read_lsn_moved.notify_all()
        self.subscribed.set()

    def apply_batch(self, records: list, vdl: int, vdl_unix_s: float) -> None:
        with self.lock:
            for record in records:
                if record.lsn > self.cache.applied_lsn:   # older ones predate this subscription
                    self.cache.apply_record(record)
                    self.tails.add(segment_of_page(record.page, self.pages_per_segment), record.lsn)
                    self.cache.prune(self._min_pinned_locked(), record.page)
            if vdl > self.read_lsn:
                self.read_lsn = vdl
                self.lag.add(max(0.0, (time.time() - vdl_unix_s) * 1000))
                self.read_lsn_moved.notify_all()

    def _min_pinned_locked(self) -> int:
        return min(self._pins.values(), default=self.read_lsn)

    def maintain(self) -> None:
        floor = self.min_pinned_lsn()
        with self.lock:
            self.cache.prune(floor)
            self.cache.forget_recent_below(floor)
            self.cache.evict(keep_above_lsn=1 << 62)

    def close(self) -> None:
        try:
            self.loop.run(self.client.close(), timeout_s=10)
        finally:
            self.loop.stop()
