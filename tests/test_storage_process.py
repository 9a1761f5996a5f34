"""Storage-node processes over real gRPC: fencing, torn logs, malformed input, gossip."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

from sixfold.nodes.storage import codec
from sixfold.nodes.storage.codec import FrameType
from sixfold.nodes.storage.log import LogPosition, encode_frame, list_log_files, log_file_path, scan_log
from sixfold.nodes.storage.replica import Meta
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.epochs import Truncation
from sixfold.volume.records import decode_records
from tests.storage_cluster import StorageNodeProcess
from tests.storage_util import VOLUME, ChainBuilder, append_request, page_image

pytestmark = pytest.mark.slow

SLOW_MATERIALISE = ["--materialise-interval-ms", "600000"]  # keep records in the log only


def run_append(node: StorageNodeProcess, requests, timeout_s: float = 15.0) -> list[pb.AppendAck]:
    return list(node.stub().Append(iter(requests), timeout=timeout_s))


def state(node: StorageNodeProcess, segment: int) -> pb.SegmentState | None:
    response = node.stub().GetSegmentState(pb.SegmentStateRequest(volume_id=VOLUME, segments=[segment]), timeout=5)
    return response.segments[0] if response.segments else None


def fetch_all(node: StorageNodeProcess, segment: int) -> bytes:
    out, after = [], 0
    for _ in range(1000):
        r = node.stub().FetchRecords(pb.FetchRecordsRequest(volume_id=VOLUME, segment=segment, after_lsn=after), timeout=5)
        assert r.error == pb.OK, r.detail
        if r.records:
            out.append(r.records)
            after = decode_records(r.records)[-1].lsn
        if not r.has_more:
            return b"".join(out)
    raise AssertionError("FetchRecords never finished")


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


class Volume:
    """A test writer: allocates volume-wide LSNs and keeps each segment's chain."""

    def __init__(self, members: list[str], epoch: int = 1) -> None:
        self.members = members
        self.epoch = epoch
        self.next_lsn = 1
        self.chains: dict[int, ChainBuilder] = {}
        self.batch_seq = 0

    def batch(self, per_segment: dict[int, int], **kwargs) -> pb.AppendRequest:
        segments = {}
        for segment, count in per_segment.items():
            chain = self.chains.setdefault(segment, ChainBuilder(self.epoch))
            records = []
            for _ in range(count):
                lsn = self.next_lsn
                self.next_lsn += 1
                page = segment * 100 + lsn % 5
                image = bytearray(chain.images.get(page, page_image(page)))
                image[lsn % 4000 : lsn % 4000 + 8] = lsn.to_bytes(8, "little")
                records.append(chain.change(lsn, page, bytes(image)))
            segments[segment] = records
        self.batch_seq += 1
        return append_request(self.batch_seq, segments, epoch=self.epoch, members=self.members, **kwargs)

    def last_lsn(self, segment: int) -> int:
        return self.chains[segment].prev_lsn


def assert_acked(acks: list[pb.AppendAck], last_seq: int) -> None:
    assert acks, "no ack"
    assert all(a.error == pb.OK for a in acks), [a.detail for a in acks if a.error]
    assert acks[-1].batch_seq == last_seq


# --------------------------------------------------------------------- fencing


@pytest.mark.timeout(60)
def test_stale_epoch_is_refused_for_append_and_get_page(storage_cluster_factory):
    [node] = storage_cluster_factory(azs=1, per_az=1).nodes
    vol = Volume([node.address], epoch=2)
    assert_acked(run_append(node, [vol.batch({0: 5})]), 1)
    reply = node.stub().BumpEpoch(pb.BumpEpochRequest(volume_id=VOLUME, segment=0, new_epoch=3, owner="recoverer"), timeout=5)
    assert reply.error == pb.OK and reply.state.volume_epoch == 3 and reply.state.scl == 5

    stale = run_append(node, [vol.batch({0: 2})])
    assert [a.error for a in stale] == [pb.STALE_EPOCH] and stale[0].node_epoch == 3
    page = node.stub().GetPage(pb.GetPageRequest(volume_id=VOLUME, segment=0, page=1, read_lsn=5, volume_epoch=2), timeout=5)
    assert page.error == pb.STALE_EPOCH
    page = node.stub().GetPage(pb.GetPageRequest(volume_id=VOLUME, segment=0, page=1, read_lsn=5, volume_epoch=3), timeout=5)
    assert page.error == pb.OK and page.exists and page.page_lsn == 1

    vol.epoch = 3
    other = run_append(node, [append_request(9, {}, epoch=3, writer="someone-else")] + [vol.batch({0: 1}, writer="someone-else")])
    assert [a.error for a in other][-1] == pb.NOT_EPOCH_OWNER
    truncate = node.stub().Truncate(pb.TruncateRequest(volume_id=VOLUME, segment=0, epoch=2, owner="recoverer", start_lsn=3), timeout=5)
    assert truncate.error == pb.STALE_EPOCH
    lower = node.stub().BumpEpoch(pb.BumpEpochRequest(volume_id=VOLUME, segment=0, new_epoch=2, owner="x"), timeout=5)
    assert lower.error == pb.STALE_EPOCH and lower.state.volume_epoch == 3
    assert state(node, 0).scl == 5  # nothing from the refused requests was stored


# ------------------------------------------------------------------ torn logs


def last_log(node: StorageNodeProcess):
    """The stopped node's last log file, ending at its last frame: a killed node leaves its
    zeroed-ahead space after it (cut here as a restart would), so appending goes right after."""
    directory = node.data_dir / "log"
    scan_log(directory, LogPosition(list_log_files(directory)[0], 0), lambda pos, t, p: None)
    return log_file_path(directory, list_log_files(directory)[-1])


@pytest.mark.timeout(90)
def test_torn_log_tail_is_repaired_on_restart_without_losing_acked_records(storage_cluster_factory):
    [node] = storage_cluster_factory(azs=1, per_az=1, extra_args=SLOW_MATERIALISE).nodes
    vol = Volume([node.address])
    acks = run_append(node, [vol.batch({0: 10}) for _ in range(5)])
    assert_acked(acks, 5)
    acked = fetch_all(node, 0)
    node.kill()

    path = last_log(node)
    size = path.stat().st_size
    # a torn write of a frame that was never acknowledged, then plain garbage
    unacked = vol.batch({0: 10})
    frame = encode_frame(FrameType.RECORDS, codec.encode_records(VOLUME, 0, unacked.segments[0].records))
    with open(path, "ab") as f:
        f.write(frame[: len(frame) // 2])
    node.start()
    assert path.stat().st_size == size
    assert "truncating" in node.log_text()
    assert fetch_all(node, 0) == acked and state(node, 0).scl == 50
    node.kill()

    with open(path, "ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 100)
    node.start()
    assert fetch_all(node, 0) == acked
    # and it takes writes again, after the repaired end
    vol.next_lsn = 51
    vol.chains[0].prev_lsn = 50
    assert_acked(run_append(node, [vol.batch({0: 10})]), vol.batch_seq)
    node.restart()
    assert state(node, 0).scl == 60


@pytest.mark.timeout(120)
def test_cut_last_frame_heals_by_gossip(storage_cluster_factory):
    cluster = storage_cluster_factory(azs=3, per_az=2, extra_args=SLOW_MATERIALISE, gossip_interval_ms=50)
    victim = cluster.nodes[0]
    vol = Volume(cluster.addresses)
    requests = [vol.batch({0: 20}) for _ in range(3)]
    for node in cluster.nodes:
        assert_acked(run_append(node, requests), 3)
    victim.kill()
    path = last_log(victim)
    frames = []
    scan_log(path.parent, LogPosition(list_log_files(path.parent)[0], 0), lambda pos, t, p: frames.append(pos))
    last = frames[-1]
    assert last.file_no == list_log_files(path.parent)[-1]
    with open(path, "r+b") as f:
        f.truncate(last.offset + 5)  # the last frame loses all but five bytes
    victim.start()
    wait_until(lambda: state(victim, 0).scl == 60, 20, "the cut node to catch up by gossip")
    assert fetch_all(victim, 0) == fetch_all(cluster.nodes[1], 0)


# ------------------------------------------------------------------ malformed


@pytest.mark.timeout(90)
def test_malformed_requests_get_errors_and_the_node_keeps_serving(storage_cluster_factory):
    cluster = storage_cluster_factory(azs=1, per_az=1)
    [node] = cluster.nodes
    vol = Volume([node.address])
    good = vol.batch({0: 3})
    assert_acked(run_append(node, [good]), 1)

    bad_crc = Volume([node.address]).batch({0: 2})  # a scratch writer: vol's chain stays intact
    raw = bytearray(bad_crc.segments[0].records)
    raw[40] ^= 0xFF
    bad_crc.segments[0].records = bytes(raw)
    cases = {
        "CRC": bad_crc,
        "volume_id": append_request(2, {0: []}, volume_id="", members=[node.address]),
        "positive": append_request(3, {0: []}, epoch=0, members=[node.address]),
        "writer_id": append_request(4, {0: []}, writer="", members=[node.address]),
        "truncated": pb.AppendRequest(batch_seq=5, volume_id=VOLUME, volume_epoch=1, writer_id="writer-1",
                                      segments=[pb.SegmentAppend(segment=0, records=b"\x01\x02\x03")]),
        "twice": pb.AppendRequest(batch_seq=6, volume_id=VOLUME, volume_epoch=1, writer_id="writer-1",
                                  segments=[pb.SegmentAppend(segment=0), pb.SegmentAppend(segment=0)]),
        "members": append_request(7, {5: []}, members=[f"m{i}:1" for i in range(40)]),
        "required": append_request(8, {6: []}, members=[]),
        "different bytes": append_request(9, {0: [ChainBuilder().full(1, 0, page_image(77))]}, members=[node.address]),
    }
    for expected, request in cases.items():
        acks = run_append(node, [request])
        assert [a.error for a in acks] == [pb.INVALID], expected
        assert expected in acks[0].detail, (expected, acks[0].detail)

    # one bad request in a stream does not stop the good ones after it
    acks = run_append(node, [cases["CRC"], vol.batch({0: 2})])
    assert [a.error for a in acks] == [pb.INVALID, pb.OK] and acks[-1].batch_seq == vol.batch_seq

    # oversized: refused by gRPC with a clear status, the node stays up
    huge = pb.AppendRequest(batch_seq=99, volume_id=VOLUME, volume_epoch=1, writer_id="writer-1",
                            segments=[pb.SegmentAppend(segment=0, records=b"\0" * (17 << 20))])
    with pytest.raises(grpc.RpcError) as error:
        run_append(node, [huge])
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # unknown segments and nonsense reads
    stub = node.stub()
    assert stub.GetPage(pb.GetPageRequest(volume_id=VOLUME, segment=42, page=1, read_lsn=1, volume_epoch=1)).error == pb.UNKNOWN_SEGMENT
    assert stub.GetPage(pb.GetPageRequest(volume_id="nope", segment=0)).error == pb.UNKNOWN_SEGMENT
    assert stub.FetchRecords(pb.FetchRecordsRequest(volume_id=VOLUME, segment=42)).error == pb.UNKNOWN_SEGMENT
    assert stub.Truncate(pb.TruncateRequest(volume_id=VOLUME, segment=42, epoch=1, owner="x")).error == pb.UNKNOWN_SEGMENT
    assert stub.BumpEpoch(pb.BumpEpochRequest(volume_id="", segment=0, new_epoch=5, owner="x")).error == pb.INVALID
    assert stub.BumpEpoch(pb.BumpEpochRequest(volume_id=VOLUME, segment=0, new_epoch=0, owner="x")).error == pb.INVALID
    assert stub.GetPage(pb.GetPageRequest(volume_id=VOLUME, segment=0, page=2**32 - 1, read_lsn=2**64 - 1,
                                          volume_epoch=1, wait_ms=2**32 - 1), timeout=10).error == pb.NOT_AVAILABLE

    # a stream that goes away in the middle of a batch
    release = threading.Event()
    batch = vol.batch({0: 2})

    def requests():
        yield batch
        yield pb.AppendRequest(batch_seq=1000, volume_id=VOLUME, volume_epoch=1, writer_id="writer-1",
                               segments=[pb.SegmentAppend(segment=0, records=b"\0" * (4 << 20))])
        release.wait(10)

    for _ in range(3):
        call = node.stub().Append(requests(), timeout=10)
        next(call)  # the first batch is acknowledged
        call.cancel()
    release.set()

    # raw TCP garbage, and a connection that dies half-way through the HTTP/2 preface
    with socket.create_connection((node.host, node.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
    with socket.create_connection((node.host, node.port), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n")

    health = node.stub().Health(pb.HealthRequest(), timeout=5)
    assert health.status == "SERVING" and health.fsync_count > 0 and health.records_durable >= 3
    assert_acked(run_append(node, [vol.batch({0: 1})]), vol.batch_seq)
    assert state(node, 0).scl == vol.last_lsn(0)
    assert cluster.errors() == []
    assert node.stop() == 0  # and it still stops cleanly


# ---------------------------------------------------------------------- gossip


@pytest.mark.timeout(120)
def test_members_that_missed_writes_reach_the_same_scl_by_gossip(storage_cluster):
    nodes = storage_cluster.nodes
    vol = Volume(storage_cluster.addresses)
    # the first batch creates the replicas everywhere (segment 1 by BumpEpoch, as a recoverer would)
    first = vol.batch({0: 5})
    for node in nodes:
        assert_acked(run_append(node, [first]), 1)
        reply = node.stub().BumpEpoch(pb.BumpEpochRequest(volume_id=VOLUME, segment=1, new_epoch=1, owner="writer-1",
                                                          members=storage_cluster.addresses), timeout=5)
        assert reply.error == pb.OK
    later = [vol.batch({0: 30, 1: 20}) for _ in range(10)]
    for node in nodes[:4]:
        assert_acked(run_append(node, later), vol.batch_seq)
    for segment in (0, 1):
        final = vol.last_lsn(segment)
        for node in nodes[4:]:
            wait_until(lambda node=node, segment=segment, final=final: state(node, segment).scl == final,
                       30, f"{node.node_id} segment {segment} SCL {final}")
        reference = fetch_all(nodes[0], segment)
        assert len(decode_records(reference)) == (305 if segment == 0 else 200)
        for node in nodes[4:]:
            assert fetch_all(node, segment) == reference
    # a segment's SCL stops at its own last record: a reader asks at that LSN
    read = pb.GetPageRequest(volume_id=VOLUME, segment=0, page=1, read_lsn=vol.last_lsn(0), volume_epoch=1)
    page = nodes[5].stub().GetPage(read, timeout=5)
    reference_page = nodes[0].stub().GetPage(read, timeout=5)
    assert page.error == pb.OK and page.data == reference_page.data and page.page_lsn == reference_page.page_lsn
    assert storage_cluster.errors() == []


@pytest.mark.timeout(120)
def test_killed_and_paused_nodes_catch_up_by_gossip(storage_cluster):
    nodes = storage_cluster.nodes
    vol = Volume(storage_cluster.addresses)
    first = [vol.batch({0: 10}) for _ in range(3)]
    for node in nodes:
        assert_acked(run_append(node, first), 3)
    nodes[0].kill()
    nodes[2].pause()
    later = [vol.batch({0: 25}) for _ in range(8)]
    for node in (nodes[1], nodes[3], nodes[4], nodes[5]):
        assert_acked(run_append(node, later), vol.batch_seq)
    nodes[0].start()
    nodes[2].resume()
    final = vol.last_lsn(0)
    for node in (nodes[0], nodes[2]):
        wait_until(lambda node=node: state(node, 0).scl == final, 30, f"{node.node_id} to reach SCL {final}")
        assert fetch_all(node, 0) == fetch_all(nodes[1], 0)
    assert storage_cluster.errors() == []


@pytest.mark.timeout(120)
def test_scl_moved_by_gossip_is_pushed_on_open_streams(storage_cluster):
    nodes = storage_cluster.nodes
    vol = Volume(storage_cluster.addresses)
    first = vol.batch({0: 5})
    for node in nodes:
        assert_acked(run_append(node, [first]), 1)
    gap = vol.batch({0: 5})      # the batch node 5 misses
    after = vol.batch({0: 5})    # the batch node 5 gets, above its gap
    release = threading.Event()

    def requests():
        yield after
        release.wait(20)

    # node 5 gets `after` first, while no node has `gap` yet: its SCL must stay at 5
    call = nodes[5].stub().Append(requests(), timeout=30)
    acks = [next(call)]
    assert acks[0].batch_seq == 3 and acks[0].segments[0].scl == 5  # durable, but above a gap
    for node in nodes[:5]:
        assert_acked(run_append(node, [gap, after]), 3)
    for ack in call:  # gossip fills the gap; the stream is told without sending anything
        acks.append(ack)
        if ack.segments and ack.segments[0].scl == vol.last_lsn(0):
            break
    release.set()
    call.cancel()
    assert acks[-1].segments[0].scl == 15 and acks[-1].batch_seq == 3 and acks[-1].error == pb.OK


def voided_in_log(node: StorageNodeProcess) -> int:
    """Records the node's log says a truncation voided (by Truncate or learned by gossip)."""
    text = node.log_text()
    return sum(int(n) for n in re.findall(r"voided (\d+) record\(s\)", text)) + sum(
        int(n) for n in re.findall(r"\((\d+) record\(s\) voided\)", text)
    )


@pytest.mark.timeout(120)
def test_stray_truncation_spares_upgraded_records_and_gossip_spreads_the_upgraded_copies(storage_cluster_factory):
    cluster = storage_cluster_factory(azs=3, per_az=2, gossip_interval_ms=50)
    nodes = cluster.nodes
    vol = Volume(cluster.addresses)
    written = [vol.batch({0: 10}) for _ in range(3)]  # LSNs 1..30 at epoch 1, no VDL announced yet
    for node in nodes:
        assert_acked(run_append(node, written), 3)
    records = decode_records(fetch_all(nodes[0], 0))
    assert [r.lsn for r in records] == list(range(1, 31))
    # A recovery at epoch 2 truncated node 5 at 10 and died: its truncation is on node 5 only
    # (written into node 5's log while it is down, so that gossip cannot spread it early).
    nodes[4].kill()
    nodes[5].kill()
    stray_meta = Meta(2, "recoverer-2", (Truncation(2, 10),), tuple(cluster.addresses))
    with open(last_log(nodes[5]), "ab") as f:
        f.write(encode_frame(FrameType.SEGMENT_META, codec.encode_meta(VOLUME, 0, stray_meta, 0, 0)))
    # The recovery at epoch 3 does not see it: it fences nodes 0..3, keeps 1..20 (baseline 10,
    # VDL 20), re-replicates 11..20 re-stamped with epoch 3 and truncates at 20.
    for node in nodes[:4]:
        reply = node.stub().BumpEpoch(pb.BumpEpochRequest(volume_id=VOLUME, segment=0, new_epoch=3, owner="rec",
                                                          members=cluster.addresses), timeout=5)
        assert reply.error == pb.OK, reply.detail
    repair = append_request(1, {0: [dataclasses.replace(r, epoch=3) for r in records[10:20]]}, epoch=3,
                            writer="rec", members=cluster.addresses, vdl_hint=10)
    for node in nodes[:4]:
        assert_acked(run_append(node, [repair]), 1)
        assert state(node, 0).scl == 30  # an upgrade moves no chain
    for node in nodes[:4]:
        reply = node.stub().Truncate(pb.TruncateRequest(volume_id=VOLUME, segment=0, epoch=3, owner="rec",
                                                        start_lsn=20, baseline_lsn=10), timeout=5)
        assert reply.error == pb.OK and reply.state.scl == 20
    expected = [(r.lsn, 1 if r.lsn <= 10 else 3) for r in records[:20]]

    def converged(node) -> bool:
        s = state(node, 0)
        if s is None or s.scl != 20 or s.volume_epoch != 3:
            return False
        # the stray entry was written without a baseline (an older node): it reads as baseline = start
        if {(t.epoch, t.start_lsn, t.baseline_lsn) for t in s.truncations} != {(2, 10, 10), (3, 20, 10)}:
            return False
        return [(r.lsn, r.epoch) for r in decode_records(fetch_all(node, 0))] == expected

    # Node 5 comes back: gossip merges both truncations everywhere. The upgraded copies on
    # nodes 0..3 survive (2, 10); node 5's old copies above 10 are void, and refilled.
    nodes[5].start()
    for node in nodes[:4] + [nodes[5]]:
        wait_until(lambda node=node: converged(node), 30, f"{node.node_id} to hold the upgraded copies")
    # Node 4 missed the whole recovery and holds every old copy: it learns both truncations
    # at once from a peer, loses its copies above 10 to the stray one and refills them.
    nodes[4].start()
    wait_until(lambda: converged(nodes[4]), 30, f"{nodes[4].node_id} to hold the upgraded copies")
    for node in nodes[:4]:
        assert "re-stamped with a higher epoch" in node.log_text()
        # 21..30 went (by the Truncate, or by gossip when a peer got it first), and nothing else
        assert voided_in_log(node) == 10, node.log_text()
    assert voided_in_log(nodes[4]) == 20  # its old 11..30, at once
    reference = fetch_all(nodes[0], 0)
    for node in nodes[1:]:
        assert fetch_all(node, 0) == reference
    assert cluster.errors() == []


@pytest.mark.timeout(120)
def test_old_copies_a_repair_missed_are_dropped_and_gossip_refills_them_re_stamped(storage_cluster_factory):
    cluster = storage_cluster_factory(azs=3, per_az=2, gossip_interval_ms=50)
    nodes = cluster.nodes
    vol = Volume(cluster.addresses)
    written = [vol.batch({0: 10}) for _ in range(3)]  # LSNs 1..30 at epoch 1
    for node in nodes:
        assert_acked(run_append(node, written), 3)
    records = decode_records(fetch_all(nodes[0], 0))
    # A recovery at epoch 3 (baseline 10, VDL 20) while node 5 is down: it fences nodes 0..4,
    # re-replicates 11..20 re-stamped to nodes 0..3 (node 4's Append is lost) and truncates 0..4.
    nodes[5].kill()
    for node in nodes[:5]:
        reply = node.stub().BumpEpoch(pb.BumpEpochRequest(volume_id=VOLUME, segment=0, new_epoch=3, owner="rec",
                                                          members=cluster.addresses), timeout=5)
        assert reply.error == pb.OK, reply.detail
    repair = append_request(1, {0: [dataclasses.replace(r, epoch=3) for r in records[10:20]]}, epoch=3,
                            writer="rec", members=cluster.addresses, vdl_hint=10)
    for node in nodes[:4]:
        assert_acked(run_append(node, [repair]), 1)
    for node in nodes[:5]:
        reply = node.stub().Truncate(pb.TruncateRequest(volume_id=VOLUME, segment=0, epoch=3, owner="rec",
                                                        start_lsn=20, baseline_lsn=10), timeout=5)
        assert reply.error == pb.OK, reply.detail
        assert [(t.epoch, t.start_lsn, t.baseline_lsn) for t in reply.state.truncations] == [(3, 20, 10)]
    bad = nodes[0].stub().Truncate(pb.TruncateRequest(volume_id=VOLUME, segment=0, epoch=3, owner="rec",
                                                      start_lsn=20, baseline_lsn=21), timeout=5)
    assert bad.error == pb.INVALID
    expected = [(r.lsn, 1 if r.lsn <= 10 else 3) for r in records[:20]]

    def converged(node) -> bool:
        s = state(node, 0)
        return (s is not None and s.scl == 20 and s.volume_epoch == 3
                and [(r.lsn, r.epoch) for r in decode_records(fetch_all(node, 0))] == expected)

    # Node 4 dropped its old copies 11..20 at the Truncate (21..30 are void) and gets the
    # re-stamped ones by gossip; node 5 comes back, learns (3, 20, 10) from a peer, and does the same.
    nodes[5].start()
    for node in nodes:
        wait_until(lambda node=node: converged(node), 30, f"{node.node_id} to hold the re-stamped copies")
    for node in nodes[4:]:
        assert "10 old copy(ies) dropped" in node.log_text(), node.log_text()
    for node in nodes[:4]:
        assert "old copy(ies) dropped" not in node.log_text()
    reference = fetch_all(nodes[0], 0)
    for node in nodes[1:]:
        assert fetch_all(node, 0) == reference
    assert cluster.errors() == []


# ------------------------------------------------------------------------- CLI


def run_cli(*args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sixfold.nodes.storage", *args], capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.mark.timeout(90)
def test_cli_usage_errors(tmp_path, storage_cluster_factory):
    base = ["--node-id", "x", "--az", "az1"]
    bad = run_cli(*base, "--listen", "127.0.0.1", "--data-dir", str(tmp_path / "d"))
    assert bad.returncode == 2 and "host:port" in bad.stderr
    bad = run_cli(*base, "--listen", "127.0.0.1:99999", "--data-dir", str(tmp_path / "d"))
    assert bad.returncode == 2
    (tmp_path / "file").write_text("x")
    bad = run_cli(*base, "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path / "file" / "d"))
    assert bad.returncode == 2 and "not a writable directory" in bad.stderr
    [node] = storage_cluster_factory(azs=1, per_az=1).nodes
    busy = run_cli(*base, "--listen", node.address, "--data-dir", str(tmp_path / "other"))
    assert busy.returncode == 3 and "already in use" in busy.stderr
    locked = run_cli(*base, "--listen", "127.0.0.1:1", "--data-dir", str(node.data_dir))
    assert locked.returncode == 2 and "in use by another storage node" in locked.stderr
    env_help = subprocess.run([sys.executable, "-c", "from sixfold.cli.main import cli; cli()", "storage-node", "--help"],
                              capture_output=True, text=True, timeout=20)
    assert env_help.returncode == 0 and "SIXFOLD_LISTEN" in env_help.stdout
