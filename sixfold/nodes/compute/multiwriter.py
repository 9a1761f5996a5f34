"""Multi-writer I/O shells (see MULTIWRITER.md): the writer connection's file, and the two
backends it commits through: the primary's adjudicator (in process) and a peer's RPC to it.

A backend gives the file three things: a pinned read point (`pin`/`unpin`), page images at
that point (`read`), and `commit` (decide + issue; raises WriteConflictError for a loser).
"""

from __future__ import annotations

import logging
import threading
import time

import apsw
import grpc

from sixfold.client.errors import CommitTimeoutError, FencedError, StorageError
from sixfold.nodes.compute.vfs import (DB_NAME, SQLITE_FCNTL_COMMIT_PHASETWO, SQLITE_LOCK_NONE,
                                       SQLITE_LOCK_SHARED, BufferedWriteFile, SixfoldVFS, _page_span)
from sixfold.nodes.compute.volume import ReaderVolume, WriterVolume, db_size_pages
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from sixfold.volume.multiwriter import Adjudicator, CommitRequest, Conflict, merge_page1
from sixfold.volume.records import PAGE_SIZE_BYTES

log = logging.getLogger(__name__)

SERIALIZATION_FAILURE = "serialization_failure"
REFRESH_WAIT_S = 10.0


class WriteConflictError(StorageError):
    """This transaction lost a page conflict to a concurrent commit: retry it (40001)."""

    def __init__(self, message: str, winner_lsn: int) -> None:
        super().__init__(message)
        self.winner_lsn = winner_lsn


# --- the primary: the adjudicator -------------------------------------------------------
class PrimaryBackend:
    """On the writer that owns the volume epoch. Local transactions read at the newest
    *issued* point (like the single writer, they may build on commits not yet durable:
    acknowledgements follow VDL order, so nothing acknowledged can depend on a lost one)."""

    def __init__(self, volume: WriterVolume) -> None:
        self.volume = volume
        self.lock = threading.Lock()   # decide + issue: LSN order is decision order
        self.adjudicator = Adjudicator(floor_lsn=volume.issued_lsn)

    def pin(self) -> tuple[int, int]:
        volume = self.volume
        with volume.lock:
            pin = next(volume._pin_ids)
            volume._pins[pin] = volume.issued_lsn
            return pin, volume.issued_lsn

    def unpin(self, pin: int) -> None:
        self.volume.unpin(pin)

    def read(self, page: int, read_lsn: int) -> bytes | None:
        volume = self.volume
        with volume.lock:
            hit, image = volume.cache.read(page, read_lsn)
            durable = volume.read_lsn
        if hit:
            return image
        # every version above VDL is cached (issued here, never evicted): a page that
        # misses has none in (VDL, read_lsn], so storage at min(read_lsn, VDL) has it
        at = min(read_lsn, durable)
        image = volume.loop.run(volume.client.read_page(page, at))
        with volume.lock:
            volume.cache.insert_fetched(page, at, at, image)
        return image

    def commit(self, request: CommitRequest) -> int | None:
        """Decides and issues; durability is awaited by the caller (without its locks)."""
        with self.lock:
            decision = self.adjudicator.decide(request, self.volume.read_newest(0))
            if isinstance(decision, Conflict):
                raise WriteConflictError(f"could not serialize access: {decision.reason}", decision.winner_lsn)
            writes = dict(request.pages)
            if decision is not None:
                writes[0] = decision
            if not writes:
                return None
            lsn = self.volume.publish(writes)
            if lsn is not None:
                self.adjudicator.accepted(lsn, request.pages)
            return lsn

    def refresh(self, winner_lsn: int) -> None:
        return None   # the primary's read point is its issued point: it already has the winner


async def serve_commit(backend: PrimaryBackend, request: cpb.MultiWriterCommitRequest,
                       loop) -> cpb.MultiWriterCommitResponse:
    """The MultiWriterCommit RPC on the primary's loop: decide + issue in a thread (the
    quorum client takes its thread lock), then wait for durability on the loop."""
    commit = CommitRequest(
        read_lsn=request.read_lsn, pages={p.page: p.image for p in request.pages},
        page0_base=request.page0_base if request.HasField("page0_base") else None,
        page0_mine=request.page0_mine if request.HasField("page0_mine") else None)
    try:
        lsn = await loop.run_in_executor(None, backend.commit, commit)
        if lsn is not None:
            await backend.volume.client.wait_durable(lsn)
    except WriteConflictError as exc:
        return cpb.MultiWriterCommitResponse(error_code=SERIALIZATION_FAILURE, detail=str(exc),
                                             winner_lsn=exc.winner_lsn)
    except FencedError as exc:
        return cpb.MultiWriterCommitResponse(error_code="fenced", detail=str(exc))
    except CommitTimeoutError as exc:
        return cpb.MultiWriterCommitResponse(error_code="commit_unknown", detail=str(exc))
    except StorageError as exc:
        return cpb.MultiWriterCommitResponse(error_code="storage_unavailable", detail=str(exc))
    return cpb.MultiWriterCommitResponse(commit_lsn=lsn or 0)


# --- a peer writer: follows the primary, commits through it ------------------------------
class PeerWriterVolume(ReaderVolume):
    """A reader's volume that can also wait for its redo view to reach an LSN."""

    applied = None   # threading.Condition, set in open()

    @classmethod
    def open(cls, *args, **kwargs) -> "PeerWriterVolume":
        volume = super().open(*args, **kwargs)
        volume.applied = threading.Condition(volume.lock)
        return volume

    def apply_batch(self, records: list, vdl: int, vdl_unix_s: float) -> None:
        super().apply_batch(records, vdl, vdl_unix_s)
        with self.applied:
            self.applied.notify_all()

    def start_following(self, *args, **kwargs) -> None:
        super().start_following(*args, **kwargs)
        with self.applied:
            self.applied.notify_all()   # a resubscription moves the read point too

    def wait_applied(self, lsn: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self.applied:
            while self.read_lsn < lsn:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommitTimeoutError(
                        f"the redo stream from the primary did not reach LSN {lsn} within {timeout_s:.0f} s "
                        f"(applied: {self.read_lsn})")
                self.applied.wait(remaining)


class PeerBackend:
    """A peer writer: reads at the VDL its redo stream reached; commits by RPC to the
    primary it follows (the address can change on failover)."""

    def __init__(self, volume: PeerWriterVolume, node_id: str, primary_address, timeout_s: float) -> None:
        self.volume = volume
        self.node_id = node_id
        self.primary_address = primary_address   # callable -> "HOST:PORT"
        self.timeout_s = timeout_s
        self._channel_lock = threading.Lock()
        self._channel: tuple[str, grpc.Channel] | None = None

    def pin(self) -> tuple[int, int]:
        return self.volume.pin()

    def unpin(self, pin: int) -> None:
        self.volume.unpin(pin)

    def read(self, page: int, read_lsn: int) -> bytes | None:
        return self.volume.read_at(page, read_lsn)

    def _stub(self) -> compute_pb2_grpc.ComputeStub:
        address = self.primary_address()
        with self._channel_lock:
            if self._channel is None or self._channel[0] != address:
                if self._channel is not None:
                    self._channel[1].close()
                self._channel = (address, grpc.insecure_channel(address))
            return compute_pb2_grpc.ComputeStub(self._channel[1])

    def commit(self, request: CommitRequest) -> int | None:
        pb_request = cpb.MultiWriterCommitRequest(
            writer_id=self.node_id, read_lsn=request.read_lsn,
            pages=[cpb.ChangedPage(page=p, image=image) for p, image in sorted(request.pages.items())],
            page0_base=request.page0_base, page0_mine=request.page0_mine)
        try:
            reply = self._stub().MultiWriterCommit(pb_request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise CommitTimeoutError(f"the primary writer at {self.primary_address()} did not answer the commit "
                                     f"({exc.code().name}); its outcome is unknown") from None
        if reply.error_code == SERIALIZATION_FAILURE:
            raise WriteConflictError(reply.detail, reply.winner_lsn)
        if reply.error_code == "not_primary":   # refused before anything was decided
            raise StorageError(f"the writer this node follows does not decide commits: {reply.detail}")
        if reply.error_code:
            # fenced or cut off from storage, possibly after it issued the records: unknown
            raise CommitTimeoutError(f"the primary writer could not finish the commit ({reply.error_code}): "
                                     f"{reply.detail}; its outcome is unknown")
        if reply.commit_lsn:
            # durable on the primary; wait (still holding this node's SQLite lock) until this
            # node's view has it: read-your-writes, and the next transaction here reads at or
            # above it, so it never loses a conflict to this node's own commit
            self.volume.wait_applied(reply.commit_lsn, REFRESH_WAIT_S)
        return reply.commit_lsn or None

    def refresh(self, winner_lsn: int) -> None:
        """The loser's pages are refreshed once the redo stream has brought the winner."""
        self.volume.wait_applied(winner_lsn, REFRESH_WAIT_S)

    def close(self) -> None:
        with self._channel_lock:
            if self._channel is not None:
                self._channel[1].close()
                self._channel = None


# --- the writer connection's file -----------------------------------------------------------
class MultiWriterFile(BufferedWriteFile):
    """Reads at the read point pinned with the SHARED lock (NORMAL locking), buffers the
    transaction's pages, commits them through the backend at COMMIT_PHASETWO."""

    def __init__(self, backend) -> None:
        super().__init__(backend.volume)
        self.backend = backend
        self.pin: int | None = None
        self.read_lsn = 0

    def _point(self) -> int:
        return self.read_lsn if self.pin is not None else self.volume.read_lsn

    def _snapshot_size(self) -> int:
        return db_size_pages(self.backend.read(0, self._point())) * PAGE_SIZE_BYTES

    def xLock(self, level: int) -> None:
        if level >= SQLITE_LOCK_SHARED and self.pin is None:
            self.pin, self.read_lsn = self.backend.pin()
            self.dirty = {}
            self.size_bytes = self._snapshot_size()

    def xUnlock(self, level: int) -> None:
        if level == SQLITE_LOCK_NONE and self.pin is not None:
            self.backend.unpin(self.pin)
            self.pin = None
            self.dirty = {}

    def xRead(self, amount: int, offset: int) -> bytes:
        page, within = _page_span(amount, offset)
        image = self.dirty.get(page)
        if image is None:
            if self.pin is not None and offset >= self.size_bytes:
                return b""
            image = self.backend.read(page, self._point())
            if image is None:
                return b""
        return image[within:within + amount]

    def xFileSize(self) -> int:
        return self.size_bytes if self.pin is not None else self._snapshot_size()

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op == SQLITE_FCNTL_COMMIT_PHASETWO:
            writes, self.dirty = self.dirty, {}
            if writes:
                self.last_commit_lsn = self._commit(writes)
            return True
        return False

    def _commit(self, writes: dict[int, bytes]) -> int | None:
        assert self.pin is not None, "a transaction writes under the SHARED lock it read under"
        read_lsn = self.read_lsn
        pages = {}
        for page, image in writes.items():
            if page != 0 and image != self.backend.read(page, read_lsn):
                pages[page] = image
        base0 = self.backend.read(0, read_lsn)   # always sent: the schema cookie is read by every write
        mine0 = writes.get(0)
        if mine0 is not None and base0 is not None and merge_page1(base0, base0, mine0) == base0:
            mine0 = None   # only the change counter moved: nothing of page 1 to commit
        if not pages and mine0 is None:
            return None
        return self.backend.commit(CommitRequest(read_lsn, pages, base0, mine0))

    def take_commit_lsn(self) -> int | None:
        lsn, self.last_commit_lsn = self.last_commit_lsn, None
        return lsn

    def discard(self) -> None:
        self.dirty = {}

    def xClose(self) -> None:
        if self.pin is not None:
            self.backend.unpin(self.pin)
            self.pin = None


class MultiWriterVFS(SixfoldVFS):
    """SixfoldVFS whose writer connection commits through a multi-writer backend."""

    def __init__(self, volume, backend) -> None:
        self.backend = backend
        super().__init__(volume, writer=True)

    def xOpen(self, name, flags):
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        readonly = bool(flags[0] & apsw.SQLITE_OPEN_READONLY)
        if filename is not None and str(filename).endswith(DB_NAME) and not readonly:
            assert self.writer_file is None, "one writer connection per node"
            self.writer_file = MultiWriterFile(self.backend)   # type: ignore[assignment]
            return self.writer_file
        return super().xOpen(name, flags)
