"""The compute node's page cache: several versions per page, for snapshot reads.

Pure data structure (no I/O, no locks: the owner serialises access).

A cached page keeps its versions [(lsn, image)] in LSN order and the LSN
`complete_from` from which that history is known to be complete: a read at
LSN L >= complete_from is answered by the newest version <= L. Reads below
complete_from, and pages not cached, go to storage at L.

Versions arrive from the redo stream (on readers) or from the writer's own
commits (on the writer), always in LSN order. A record for a page that is not
cached is not applied; it is remembered for a while (`recent`), so that an
image fetched from storage at LSN R while later records went by can be brought
forward before it is cached. When that memory does not reach back to R, the
fetched image is returned but not cached.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from sixfold.volume.records import LogRecord, apply_record


@dataclass(slots=True)
class CachedPage:
    complete_from: int
    lsns: list[int] = field(default_factory=list)
    images: list[bytes | None] = field(default_factory=list)

    def add(self, lsn: int, image: bytes | None) -> None:
        assert not self.lsns or lsn > self.lsns[-1], f"versions must arrive in LSN order ({lsn} after {self.lsns[-1]})"
        self.lsns.append(lsn)
        self.images.append(image)

    def at(self, lsn: int) -> bytes | None:
        i = bisect.bisect_right(self.lsns, lsn) - 1
        assert i >= 0, "a complete history has a version at or below complete_from"
        return self.images[i]

    def newest(self) -> bytes | None:
        return self.images[-1]

    def prune_below(self, lsn: int) -> None:
        """Drops versions no read at or above lsn can see (keeps the newest one <= lsn)."""
        i = bisect.bisect_right(self.lsns, lsn) - 1
        if i > 0:
            del self.lsns[:i]
            del self.images[:i]
            self.complete_from = max(self.complete_from, self.lsns[0])


class PageCache:
    def __init__(self, capacity_pages: int = 20_000, recent_records_max: int = 200_000) -> None:
        self.capacity_pages = capacity_pages
        self._pages: OrderedDict[int, CachedPage] = OrderedDict()
        # records for pages that were not cached: page -> [(lsn, record)], expired FIFO
        self._recent: dict[int, list[tuple[int, LogRecord]]] = {}
        self._recent_order: deque[tuple[int, int]] = deque()
        self._recent_max = recent_records_max
        self.recent_floor_lsn = 0      # records above this (not cached then) are all in _recent
        self.applied_lsn = 0           # highest LSN applied (or seen) so far
        self.evicted_max_lsn = 0       # newest version LSN any evicted page had
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._pages)

    def __contains__(self, page: int) -> bool:
        return page in self._pages

    def reset(self, lsn: int) -> None:
        """Forgets everything (e.g. the redo stream broke); history is complete again from lsn."""
        self._pages.clear()
        self._recent.clear()
        self._recent_order.clear()
        self.recent_floor_lsn = lsn
        self.applied_lsn = lsn

    # --- reads ------------------------------------------------------------------
    def read(self, page: int, lsn: int) -> tuple[bool, bytes | None]:
        """(hit, image). A miss means: ask storage at lsn, then offer the image to insert_fetched."""
        cached = self._pages.get(page)
        if cached is None or lsn < cached.complete_from:
            self.misses += 1
            return False, None
        self._pages.move_to_end(page)
        self.hits += 1
        return True, cached.at(lsn)

    def newest(self, page: int) -> tuple[bool, bytes | None]:
        cached = self._pages.get(page)
        if cached is None:
            return False, None
        self._pages.move_to_end(page)
        return True, cached.newest()

    def insert_fetched(self, page: int, read_lsn: int, page_lsn: int, image: bytes | None) -> bool:
        """Caches an image storage returned for read_lsn, brought forward by records seen since."""
        if page in self._pages or read_lsn < self.evicted_max_lsn:
            return False
        if read_lsn < self.recent_floor_lsn:
            return False  # records between read_lsn and now may have gone by unremembered
        cached = CachedPage(complete_from=read_lsn)
        cached.add(min(page_lsn, read_lsn), image)
        for lsn, record in self._recent.get(page, ()):
            if lsn > read_lsn:
                cached.add(lsn, apply_record(cached.newest(), record))
        self._store(page, cached)
        return True

    # --- writes (redo, in LSN order) ------------------------------------------------
    def apply_record(self, record: LogRecord) -> None:
        """A redo record: applied to the page if cached, remembered otherwise."""
        assert record.lsn > self.applied_lsn, f"redo out of order: {record.lsn} after {self.applied_lsn}"
        self.applied_lsn = record.lsn
        cached = self._pages.get(record.page)
        if cached is not None:
            cached.add(record.lsn, apply_record(cached.newest(), record))
            return
        self._remember(record)

    def put_version(self, page: int, lsn: int, image: bytes | None) -> None:
        """A version the writer itself made: cached whether or not the page was."""
        assert lsn >= self.applied_lsn, f"version {lsn} below applied {self.applied_lsn}"
        self.applied_lsn = lsn
        cached = self._pages.get(page)
        if cached is None:
            cached = CachedPage(complete_from=lsn)
            cached.add(lsn, image)
            self._store(page, cached)
        else:
            cached.add(lsn, image)
            self._pages.move_to_end(page)

    def _remember(self, record: LogRecord) -> None:
        self._recent.setdefault(record.page, []).append((record.lsn, record))
        self._recent_order.append((record.lsn, record.page))
        while len(self._recent_order) > self._recent_max:
            lsn, page = self._recent_order.popleft()
            entries = self._recent.get(page)
            if entries:
                entries.pop(0)
                if not entries:
                    del self._recent[page]
            self.recent_floor_lsn = max(self.recent_floor_lsn, lsn)

    def forget_recent_below(self, lsn: int) -> None:
        """Records at or below lsn are no longer needed to bring fetched images forward."""
        while self._recent_order and self._recent_order[0][0] <= lsn:
            old_lsn, page = self._recent_order.popleft()
            entries = self._recent.get(page)
            if entries:
                entries.pop(0)
                if not entries:
                    del self._recent[page]
        self.recent_floor_lsn = max(self.recent_floor_lsn, min(lsn, self.applied_lsn))

    # --- memory -------------------------------------------------------------------
    def prune(self, min_read_lsn: int, page: int | None = None) -> None:
        """Drops versions no pinned reader needs (of one page, or of all)."""
        if page is None:
            targets = list(self._pages.values())
        else:
            targets = [self._pages[page]] if page in self._pages else []
        for cached in targets:
            cached.prune_below(min_read_lsn)

    def _store(self, page: int, cached: CachedPage) -> None:
        self._pages[page] = cached
        self._pages.move_to_end(page)

    def evict(self, keep_above_lsn: int) -> int:
        """Evicts least recently used pages past capacity whose versions are all <= keep_above_lsn."""
        evicted = 0
        if len(self._pages) <= self.capacity_pages:
            return 0
        for page in list(self._pages):
            if len(self._pages) <= self.capacity_pages:
                break
            cached = self._pages[page]
            if cached.lsns[-1] > keep_above_lsn:
                continue  # a version not yet durable: storage cannot give it back
            self.evicted_max_lsn = max(self.evicted_max_lsn, cached.lsns[-1])
            del self._pages[page]
            evicted += 1
        return evicted
