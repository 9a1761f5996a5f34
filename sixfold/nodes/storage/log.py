"""The durable append-only log with group commit.

Frame: [u32 crc32][u32 payload length][u8 frame type][payload], the CRC over
type + payload. Files are `<file_no:012d>.log` in one directory; a position is
(file_no, offset). Nothing is acknowledged before the fsync covering it returns.

Zeroed ahead: the writer extends the live file with zeros (ZERO_AHEAD_BYTES at a
time, with a full fsync) and then writes its groups over them, so that a group's
sync is an fdatasync of blocks already allocated and initialised: no file size
or block map changes, so no filesystem journal commit per group. The zeros past
the last frame read as the end of the log; a finished file (rotation, close) is
cut back to its last frame.

Group commit: callers enqueue frames synchronously (so log order is the order
in which the node's state machines accepted the changes) and get a future; one
writer thread writes everything pending with one write + one fsync, and hands
the group back to the event loop, which runs the entries' `on_durable`
callbacks in log order, then resolves their futures. While an fsync runs, new
frames queue up for the next group. A thread of its own (not an executor job
per group): a group costs one wake-up each way, nothing more.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("sixfold.storage.log")

FRAME_HEADER = struct.Struct("<IIB")
FRAME_PAYLOAD_MAX_BYTES = 64 * 1024 * 1024
LOG_SUFFIX = ".log"
ZERO_AHEAD_BYTES = 1024 * 1024
_ZEROS = bytes(ZERO_AHEAD_BYTES)


@dataclass(frozen=True, order=True, slots=True)
class LogPosition:
    file_no: int
    offset: int


class LogFailed(RuntimeError):
    """A write or fsync failed: nothing queued can be acknowledged any more."""


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    assert 0 < frame_type < 256 and len(payload) <= FRAME_PAYLOAD_MAX_BYTES
    type_byte = bytes((frame_type,))
    crc = zlib.crc32(payload, zlib.crc32(type_byte))
    return struct.pack("<II", crc, len(payload)) + type_byte + payload


def log_file_path(directory: Path, file_no: int) -> Path:
    return directory / f"{file_no:012d}{LOG_SUFFIX}"


def list_log_files(directory: Path) -> list[int]:
    numbers = []
    for path in directory.glob(f"*{LOG_SUFFIX}"):
        stem = path.name[: -len(LOG_SUFFIX)]
        if stem.isdigit():
            numbers.append(int(stem))
    return sorted(numbers)


def _write_fully(fd: int, data: bytes | memoryview, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame_problem(data: bytes, offset: int) -> str | None:
    remaining = len(data) - offset
    if remaining < FRAME_HEADER.size:
        return f"short frame header ({remaining} bytes)"
    crc, length, _ = FRAME_HEADER.unpack_from(data, offset)
    if length > FRAME_PAYLOAD_MAX_BYTES:
        return f"frame length {length} too large"
    if remaining < FRAME_HEADER.size + length:
        return f"short frame ({remaining} of {FRAME_HEADER.size + length} bytes)"
    body = memoryview(data)[offset + 8 : offset + FRAME_HEADER.size + length]
    if zlib.crc32(body) != crc:
        return "CRC mismatch"
    return None


def scan_log(
    directory: Path, start: LogPosition, on_frame: Callable[[LogPosition, int, bytes], None]
) -> LogPosition:
    """Calls on_frame for every good frame from `start`; returns the end position.

    At the first damaged frame (bad CRC, short length) the file is truncated
    there and later files are deleted, with a warning: a write is only
    acknowledged after its fsync, so damage can only be an unacknowledged torn
    tail (or disk corruption, which gossip from peers repairs). Zeros from there
    to the end of the last file are the writer's zeroed-ahead space: cut quietly."""
    directory.mkdir(parents=True, exist_ok=True)
    files = list_log_files(directory)
    for file_no in files:
        if file_no < start.file_no:  # fully checkpointed; its deletion was interrupted
            log_file_path(directory, file_no).unlink()
    files = [n for n in files if n >= start.file_no]
    end = LogPosition(max(start.file_no, 1), 0) if not files or files[0] != start.file_no else start
    for i, file_no in enumerate(files):
        path = log_file_path(directory, file_no)
        data = path.read_bytes()
        offset = start.offset if file_no == start.file_no else 0
        if offset > len(data):
            log.warning("log %s is shorter (%d) than its checkpoint offset %d", path.name, len(data), offset)
            offset = len(data)
        while offset < len(data):
            problem = _frame_problem(data, offset)
            if problem is not None:
                dropped = len(data) - offset
                later = files[i + 1 :]
                if not later and data.count(0, offset) == dropped:
                    log.debug("log %s: end at offset %d, %d zeroed-ahead bytes cut", path.name, offset, dropped)
                else:
                    log.warning(
                        "log %s: %s at offset %d: truncating, dropping %d bytes%s",
                        path.name, problem, offset, dropped,
                        f" and later files {later}" if later else "",
                    )
                with open(path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
                for n in later:
                    log_file_path(directory, n).unlink()
                _fsync_dir(directory)
                return LogPosition(file_no, offset)
            _, length, frame_type = FRAME_HEADER.unpack_from(data, offset)
            payload = data[offset + FRAME_HEADER.size : offset + FRAME_HEADER.size + length]
            on_frame(LogPosition(file_no, offset), frame_type, payload)
            offset += FRAME_HEADER.size + length
        end = LogPosition(file_no, offset)
    return end


@dataclass(slots=True)
class _Entry:
    frames: list[tuple[int, bytes]]
    size_bytes: int
    future: asyncio.Future
    on_durable: Callable[[], None] | None = None


@dataclass(slots=True)
class LogStats:
    fsync_count: int = 0
    bytes_written: int = 0
    groups: int = 0
    frames: int = 0
    file_bytes: dict[int, int] = field(default_factory=dict)  # live files and their sizes

    @property
    def live_bytes(self) -> int:
        return sum(self.file_bytes.values())


class GroupCommitLog:
    def __init__(
        self,
        directory: Path,
        end: LogPosition,
        *,
        file_size_limit_bytes: int = 64 * 1024 * 1024,
        queue_limit_bytes: int = 32 * 1024 * 1024,
        group_limit_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        assert end.file_no >= 1
        self.directory = directory
        self.file_size_limit_bytes = file_size_limit_bytes
        self.queue_limit_bytes = queue_limit_bytes
        self.group_limit_bytes = group_limit_bytes
        self.durable_position = end
        self.stats = LogStats()
        self.failure: BaseException | None = None
        self._file_no = end.file_no
        self._fd = os.open(log_file_path(directory, end.file_no), os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, end.offset)  # scan_log already cut any torn tail; be sure
        self._file_size_bytes = end.offset   # where the next frame goes
        self._zeroed_to = end.offset         # the file's size: zeros from _file_size_bytes on
        for n in list_log_files(directory):
            self.stats.file_bytes[n] = log_file_path(directory, n).stat().st_size
        _fsync_dir(directory)
        # appended to on the loop, taken by the writer thread (deque appends and pops are atomic)
        self._pending: collections.deque[_Entry] = collections.deque()
        self._pending_bytes = 0  # on the loop only: queued and not yet durable
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._work = threading.Event()  # loop -> writer thread: something is queued (or closing)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future | None = None
        self.failed = asyncio.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._writer, name="log-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- intake

    async def wait_for_room(self) -> None:
        """Back-pressure: waits while the queue is over its byte limit."""
        while self._pending_bytes >= self.queue_limit_bytes and self.failure is None:
            self._room.clear()
            await self._room.wait()
        if self.failure is not None:
            raise LogFailed(str(self.failure))

    def append(self, frames: list[tuple[int, bytes]], on_durable: Callable[[], None] | None = None) -> asyncio.Future:
        """Queues frames (possibly none: a barrier behind everything queued so far)."""
        if self.failure is not None or self._closing:
            raise LogFailed(str(self.failure) if self.failure else "log is closing")
        size = sum(FRAME_HEADER.size + len(p) for _, p in frames)
        entry = _Entry(frames, size, asyncio.get_running_loop().create_future(), on_durable)
        self._pending.append(entry)
        self._pending_bytes += size
        if not self._work.is_set():
            self._work.set()
        return entry.future

    # ---------------------------------------------------------------- writer

    def _writer(self) -> None:
        """The writer thread: groups, writes and fsyncs; the loop does the rest."""
        while True:
            self._work.wait()
            self._work.clear()  # before taking: an append after this sets it again
            while self._pending:
                group = self._take_group()
                frames = [f for entry in group for f in entry.frames]
                end = None
                if frames:
                    try:
                        end = self._write_group(frames)
                    except BaseException as e:  # any failure means nothing more can be acknowledged
                        self._to_loop(self._fail, e, group)
                        return
                self._to_loop(self._group_durable, group, frames, end)
            if self._closing and not self._pending:
                self._to_loop(self._stopped.set_result, None)
                return

    def _to_loop(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _group_durable(self, group: list[_Entry], frames: list[tuple[int, bytes]], end: LogPosition | None) -> None:
        """On the loop, in log order: publish the group as durable."""
        if end is not None:
            self.durable_position = end
            self.stats.file_bytes[end.file_no] = end.offset
            self.stats.bytes_written += sum(FRAME_HEADER.size + len(p) for _, p in frames)
            self.stats.fsync_count += 1
            self.stats.groups += 1
            self.stats.frames += len(frames)
        for entry in group:
            self._pending_bytes -= entry.size_bytes
            if entry.on_durable is not None:
                try:
                    entry.on_durable()
                except Exception:  # a bug in a callback must not stall the log
                    log.exception("on_durable callback failed")
            if not entry.future.done():
                entry.future.set_result(None)
        if self._pending_bytes < self.queue_limit_bytes:
            self._room.set()

    def _take_group(self) -> list[_Entry]:
        group = [self._pending.popleft()]
        size = group[0].size_bytes
        while self._pending and size + self._pending[0].size_bytes <= self.group_limit_bytes:
            entry = self._pending.popleft()
            size += entry.size_bytes
            group.append(entry)
        return group

    def _write_group(self, frames: list[tuple[int, bytes]]) -> LogPosition:
        """Runs in the writer thread: encodes (CRC) and writes the group, then fsyncs."""
        if self._file_size_bytes >= self.file_size_limit_bytes:
            self._rotate()
        buffer = b"".join(encode_frame(t, p) for t, p in frames)
        start = self._file_size_bytes
        end = start + len(buffer)
        grows = end > self._zeroed_to
        if grows:
            self._zero_ahead(end)
        _write_fully(self._fd, buffer, start)
        if grows:
            os.fsync(self._fd)  # the file's size changed: metadata too
        else:
            os.fdatasync(self._fd)  # over zeroed, allocated blocks: the data is all there is to sync
        self._file_size_bytes = end
        return LogPosition(self._file_no, end)

    def _zero_ahead(self, end: int) -> None:
        """Extends the file with zeros past `end` (the caller fsyncs)."""
        target = max(end, min(end + ZERO_AHEAD_BYTES, self.file_size_limit_bytes))
        position = max(self._zeroed_to, end)  # [_file_size_bytes, end) is the group's own
        while position < target:
            chunk = min(target - position, ZERO_AHEAD_BYTES)
            _write_fully(self._fd, memoryview(_ZEROS)[:chunk], position)
            position += chunk
        self._zeroed_to = target

    def _finish_file(self) -> None:
        """Cuts the zeroed-ahead space off and makes the file's end durable."""
        os.ftruncate(self._fd, self._file_size_bytes)
        os.fsync(self._fd)
        self._zeroed_to = self._file_size_bytes

    def _rotate(self) -> None:
        self._finish_file()
        os.close(self._fd)
        self._file_no += 1
        self._fd = os.open(log_file_path(self.directory, self._file_no), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _fsync_dir(self.directory)  # the new file's name must survive a crash too
        self._file_size_bytes = 0
        self._zeroed_to = 0

    def _fail(self, error: BaseException, group: list[_Entry]) -> None:
        # After a failed fsync the page cache state is unknown (fsyncgate): stop for good.
        log.critical("log write/fsync failed: %r; no further writes will be acknowledged", error)
        self.failure = error
        for entry in [*group, *self._pending]:
            if not entry.future.done():
                entry.future.set_exception(LogFailed(repr(error)))
        self._pending.clear()
        self._room.set()
        self.failed.set()
        if not self._stopped.done():
            self._stopped.set_result(None)  # the writer thread has ended

    # ---------------------------------------------------------- maintenance

    def delete_before(self, file_no: int) -> int:
        """Deletes files whose every frame is safely in the page store; returns how many."""
        deleted = 0
        current = self.durable_position.file_no
        for n in sorted(self.stats.file_bytes):
            if n >= min(file_no, current):
                break
            log_file_path(self.directory, n).unlink(missing_ok=True)
            del self.stats.file_bytes[n]
            deleted += 1
        return deleted

    async def close(self) -> None:
        """Writes and fsyncs everything queued, then closes the file."""
        self._closing = True
        self._work.set()
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
        if self._fd >= 0 and self.failure is None:
            self._finish_file()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
