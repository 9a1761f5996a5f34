"""The durable log: group commit, torn-tail repair, rotation, failure."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from sixfold.nodes.storage import log as log_mod
from sixfold.nodes.storage.log import (
    FRAME_HEADER,
    GroupCommitLog,
    LogFailed,
    LogPosition,
    encode_frame,
    list_log_files,
    log_file_path,
    scan_log,
)


def read_all(directory: Path, start: LogPosition = LogPosition(1, 0)):
    frames = []
    end = scan_log(directory, start, lambda pos, t, p: frames.append((pos, t, p)))
    return frames, end


def write_frames(directory: Path, payloads: list[bytes], one_by_one: bool = False, **kwargs) -> LogPosition:
    async def run():
        _, end = read_all(directory)
        wal = GroupCommitLog(directory, end, **kwargs)
        wal.start()
        if one_by_one:  # one group each
            for i, p in enumerate(payloads):
                await wal.append([(1 + i % 2, p)])
        futures = [wal.append([(1 + i % 2, p)]) for i, p in enumerate(payloads) if not one_by_one]
        await asyncio.gather(*futures)
        position = wal.durable_position
        await wal.close()
        return position

    return asyncio.run(run())


def payloads(n: int) -> list[bytes]:
    return [bytes([i]) * (i * 7 % 50 + 1) for i in range(n)]


def test_frames_round_trip(tmp_path):
    data = payloads(20)
    end = write_frames(tmp_path, data)
    frames, scanned_end = read_all(tmp_path)
    assert [p for _, _, p in frames] == data
    assert [t for _, t, _ in frames] == [1 + i % 2 for i in range(20)]
    assert scanned_end == end


def test_torn_tail_at_every_offset_of_the_last_frame_is_repaired(tmp_path):
    source = tmp_path / "source"
    data = payloads(5)
    write_frames(source, data)
    path = log_file_path(source, 1)
    whole = path.read_bytes()
    last_start = len(whole) - (FRAME_HEADER.size + len(data[-1]))
    for cut in range(last_start, len(whole)):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(source, work)
        with open(log_file_path(work, 1), "r+b") as f:
            f.truncate(cut)
        frames, end = read_all(work)
        assert [p for _, _, p in frames] == data[:-1], cut
        assert end == LogPosition(1, last_start)
        assert log_file_path(work, 1).stat().st_size == last_start
        # and it serves again: new frames go after the repaired end
        write_frames(work, [b"after-repair"])
        frames, _ = read_all(work)
        assert [p for _, _, p in frames] == data[:-1] + [b"after-repair"]
        shutil.rmtree(work)


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff" * 3, b"\x00" * 9, os.urandom(64), encode_frame(1, b"x" * 100)[:50]])
def test_garbage_after_the_last_frame_is_dropped(tmp_path, garbage):
    data = payloads(3)
    end = write_frames(tmp_path, data)
    with open(log_file_path(tmp_path, 1), "ab") as f:
        f.write(garbage)
    frames, repaired = read_all(tmp_path)
    assert [p for _, _, p in frames] == data
    assert repaired == end


def test_corrupt_middle_frame_keeps_earlier_frames_and_drops_the_rest(tmp_path, caplog):
    data = payloads(6)
    write_frames(tmp_path, data, one_by_one=True, file_size_limit_bytes=1)  # one frame per file
    assert list_log_files(tmp_path) == [1, 2, 3, 4, 5, 6]
    frames, _ = read_all(tmp_path)
    victim_pos = frames[1][0]
    path = log_file_path(tmp_path, victim_pos.file_no)
    raw = bytearray(path.read_bytes())
    raw[victim_pos.offset + FRAME_HEADER.size] ^= 0x55
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        frames, end = read_all(tmp_path)
    assert [p for _, _, p in frames] == data[:1]
    assert end == victim_pos
    assert list_log_files(tmp_path) == [1, 2] and victim_pos == LogPosition(2, 0)
    assert "CRC mismatch" in caplog.text and f"offset {victim_pos.offset}" in caplog.text


def test_group_commit_batches_concurrent_appends_and_keeps_order(tmp_path):
    async def run():
        wal = GroupCommitLog(tmp_path, LogPosition(1, 0))
        wal.start()
        order = []
        futures = [wal.append([(1, b"p%d" % i)], on_durable=lambda i=i: order.append(i)) for i in range(200)]
        barrier = wal.append([])
        await asyncio.gather(*futures, barrier)
        stats = wal.stats
        await wal.close()
        return order, stats

    order, stats = asyncio.run(run())
    assert order == list(range(200))
    assert stats.fsync_count < 20  # one fsync per group, not per append
    frames, _ = read_all(tmp_path)
    assert [p for _, _, p in frames] == [b"p%d" % i for i in range(200)]


def test_nothing_is_acknowledged_before_its_fsync(tmp_path, monkeypatch):
    synced = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def counted(sync):
        def sync_and_count(fd):
            sync(fd)
            synced.append(True)
        return sync_and_count

    monkeypatch.setattr(log_mod.os, "fsync", counted(real_fsync))
    monkeypatch.setattr(log_mod.os, "fdatasync", counted(real_fdatasync))

    async def run():
        wal = GroupCommitLog(tmp_path, LogPosition(1, 0))
        wal.start()
        for payload in (b"x", b"y"):  # the first group grows the file, the second goes over zeros
            before = len(synced)
            await wal.append([(1, payload)])
            assert len(synced) > before
        await wal.close()

    asyncio.run(run())


def test_back_pressure_waits_for_room(tmp_path):
    async def run():
        wal = GroupCommitLog(tmp_path, LogPosition(1, 0), queue_limit_bytes=1000)
        futures = [wal.append([(1, b"x" * 600)]), wal.append([(1, b"y" * 600)])]
        waiter = asyncio.create_task(wal.wait_for_room())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the writer is not running yet: the queue is full
        wal.start()
        await asyncio.wait_for(waiter, 5)
        await asyncio.gather(*futures)
        await wal.close()

    asyncio.run(run())


def test_rotation_and_deleting_checkpointed_files(tmp_path):
    async def run():
        wal = GroupCommitLog(tmp_path, LogPosition(1, 0), file_size_limit_bytes=100)
        wal.start()
        for i in range(10):
            await wal.append([(1, bytes([i]) * 60)])
        files = list_log_files(tmp_path)
        assert len(files) >= 5
        checkpoint = wal.durable_position
        deleted = wal.delete_before(checkpoint.file_no)
        assert deleted == len(files) - 1
        assert list_log_files(tmp_path) == [checkpoint.file_no]
        await wal.append([(2, b"after")])
        await wal.close()
        return checkpoint

    checkpoint = asyncio.run(run())
    frames, _ = read_all(tmp_path, checkpoint)
    assert [p for _, _, p in frames] == [b"after"]


def test_failed_fsync_fails_everything_queued_and_stops(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    async def run():
        wal = GroupCommitLog(tmp_path, LogPosition(1, 0))
        monkeypatch.setattr(log_mod.os, "fsync", broken_fsync)
        monkeypatch.setattr(log_mod.os, "fdatasync", broken_fsync)
        wal.start()
        futures = [wal.append([(1, b"x")]) for _ in range(3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, LogFailed) for r in results)
        assert wal.failed.is_set()
        with pytest.raises(LogFailed):
            wal.append([(1, b"y")])
        with pytest.raises(LogFailed):
            await wal.wait_for_room()
        monkeypatch.undo()
        await wal.close()

    asyncio.run(run())


def test_groups_sync_over_zeroed_space_and_a_crash_leaves_a_tail_that_reads_as_the_end(tmp_path, monkeypatch, caplog):
    """The writer zeroes space ahead of its frames, so a group's sync need not commit file
    metadata (fdatasync); only growing the file takes a full fsync. A node killed with its
    zeroed tail in place reopens at its last frame, quietly, and writes on from there."""
    calls = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(log_mod.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(log_mod.os, "fdatasync", lambda fd: (calls.append("fdatasync"), real_fdatasync(fd))[1])
    data = payloads(20)

    async def crash_after_writing():
        wal = GroupCommitLog(tmp_path, LogPosition(1, 0))
        calls.clear()  # (opening syncs the directory)
        wal.start()
        for p in data:
            await wal.append([(1, p)])
        end = wal.durable_position
        wal._closing = True  # stop the writer thread, but leave the file as a crash would
        wal._work.set()
        await wal._stopped
        return end

    end = asyncio.run(crash_after_writing())
    assert calls.count("fsync") == 1 and calls.count("fdatasync") == len(data) - 1
    path = log_file_path(tmp_path, 1)
    assert path.stat().st_size >= end.offset + log_mod.ZERO_AHEAD_BYTES // 2
    with caplog.at_level("DEBUG", logger="sixfold.storage.log"):
        frames, scanned_end = read_all(tmp_path)
    assert [p for _, _, p in frames] == data and scanned_end == end
    assert "truncating" not in caplog.text and "zeroed-ahead" in caplog.text
    write_frames(tmp_path, [b"after-crash"])
    frames, _ = read_all(tmp_path)
    assert [p for _, _, p in frames] == data + [b"after-crash"]
    assert path.stat().st_size == frames[-1][0].offset + FRAME_HEADER.size + len(b"after-crash")  # closed: cut
