"""`sixfold region resync` on real processes (sixfold/globaldb/resync.py, seeding.py): after an
unplanned failover the old primary, resumed, cannot commit; resynced, its storage is seeded from
the new primary's page images (the new primary collected its log from the start), its readers
read every acknowledged row and nothing of its divergent tail, and it can be switched over to
with RPO 0."""

from __future__ import annotations

import time

import grpc
import pytest

import sixfold
from sixfold.rpc import storage_pb2 as pb
from sixfold.rpc import storage_pb2_grpc as pb_grpc
from sixfold.runtime.topology import ClusterSpec, nodes_of, router_addresses
from tests.test_cli import force_teardown, free_ports
from tests.test_global_regions import address_of, cli, rows_in, wait_rows
from tests.test_region_switch import COMMIT_TIMEOUT_S, Writer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
COLLECTED_WITHIN_S = 120.0


def collected_above(storage_addresses: list[str], lsn: int, volume_id: str = "vol-1") -> bool:
    """Every listed storage node has collected the records of some segment above `lsn`
    (FetchRecords after `lsn` answers TOO_OLD there): shipping from `lsn` is impossible."""
    for address in storage_addresses:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = pb_grpc.StorageStub(channel).GetSegmentState(pb.SegmentStateRequest(volume_id=volume_id),
                                                                    timeout=2)
            except grpc.RpcError:
                return False
        if not any(s.records_gc_lsn > lsn for s in reply.segments):
            return False
    return True


def wait_acked(writer: Writer, count: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while len(writer.acked) < count:
        assert time.monotonic() < deadline, f"the writer made no progress: {len(writer.acked)} acked, {writer.unknown}"
        time.sleep(0.05)


def writing_two_regions(data_dir, *up_args, pages_per_segment: int = 256) -> tuple[list, Writer]:
    """`up --regions 2` (with up_args), a table t, and a Writer committing into it that region 2's
    reader has seen: (the nodes, the writer, running)."""
    storage_port, compute_port = free_ports(regions=2)
    cli("up", "--data-dir", data_dir, "--regions", 2, "--readers", 1, "--storage-port", storage_port,
        "--compute-port", compute_port, "--pages-per-segment", pages_per_segment, *up_args, "--json", timeout=240)
    nodes = nodes_of(ClusterSpec(regions=2, readers=1, storage_port=storage_port, compute_port=compute_port,
                                 pages_per_segment=pages_per_segment))
    endpoints = {r: router_addresses([n for n in nodes if n.region == r])["writer"] for r in (1, 2)}
    conn = sixfold.connect(endpoints[1], autocommit=True)
    conn.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)")
    conn.close()
    writer = Writer(endpoints)
    writer.start()
    try:
        wait_acked(writer, 30)
        wait_rows(address_of(data_dir, "reader-2-1"), "SELECT count(*) > 0 FROM t", [(1,)], timeout_s=60)
    except BaseException:
        writer.stop.set()
        writer.join(30)
        raise
    return nodes, writer


def test_the_old_primary_cannot_commit_and_rejoins_after_a_resync_seeded_from_pages(tmp_path):
    data_dir = tmp_path / "cluster"
    writer = None
    try:
        # two pages per segment: the table spans several segments, materialised to different points,
        # so the seed takes records above some segments' pages too
        nodes, writer = writing_two_regions(data_dir, "--commit-timeout-s", COMMIT_TIMEOUT_S, pages_per_segment=2)
        region_2_storage = [n.address for n in nodes if n.region == 2 and n.kind == "storage"]

        # region 1 is cut off (paused); region 2 takes over
        old_writer = sixfold.connect(address_of(data_dir, "writer-1"), autocommit=True)
        cli("chaos", "pause", "--data-dir", data_dir, "--region", 1, "--json")
        try:
            report = cli("region", "failover", "--data-dir", data_dir, "--to", 2, "--allow-data-loss", "--json",
                         timeout=240)
        finally:
            cli("chaos", "resume", "--data-dir", data_dir, "--region", 1, "--json")
        assert report["needs_resync"] == [1] and report["new_writer"] == "reader-2-1"
        # the old writer, resumed, cannot commit: its lease ran out and nobody grants it one; what it
        # tried is durable in region 1 only (the divergent tail the resync discards)
        with pytest.raises(sixfold.dbapi.OperationalError, match="lease"):
            old_writer.cursor().execute("INSERT INTO t (v) VALUES (-3)")
        old_writer.close()
        acked_at_failover = len(writer.acked)
        wait_acked(writer, acked_at_failover + 20)   # the writer goes on in region 2

        # region 2's storage collects its old records (nobody ships from it): region 1 must be seeded
        deadline = time.monotonic() + COLLECTED_WITHIN_S
        while not collected_above(region_2_storage, 1):
            assert time.monotonic() < deadline, "region 2's storage collected no records"
            time.sleep(1)

        acked_before_resync = len(writer.acked)
        resync = cli("region", "resync", "--data-dir", data_dir, 1, "--json", timeout=600)
        assert len(writer.acked) > acked_before_resync, "no commit went on during the resync"
        assert resync["kind"] == "resync" and resync["region"] == 1 and resync["primary"] == 2
        assert resync["seeded_lsn"] > 0, f"region 1 was not seeded from pages: {resync}"
        assert resync["vdl"] >= max(resync["primary_vdl_at_start"], resync["seeded_lsn"])
        status = {n["name"]: n for n in cli("status", "--data-dir", data_dir, "--json")}
        assert status["replicator-1"]["health"] == "ok" and status["replicator-1"]["seeded_lsn"] == resync["seeded_lsn"]
        wait_acked(writer, len(writer.acked) + 10)   # the primary needs region 1's lease again, and gets it
        writer.stop.set()
        writer.join(30)

        expected = rows_in(address_of(data_dir, "reader-2-1"), "SELECT id, v FROM t ORDER BY id")
        values = {v for _, v in expected}
        # by which region acknowledged a commit, not by when its reply came: one region 1 decided just
        # before the pause reached the client after the failover (the reply waited in paused region 1:
        # in its writer or its router)
        acked_by = {r: [v for v in writer.acked if writer.acked_by[v] == r] for r in (1, 2)}
        assert not set(acked_by[2]) - values, "commits region 2 acknowledged were lost"
        # the failover's loss (its RPO) is a tail of what region 1 acknowledged, never a hole
        lost = sorted(set(acked_by[1]) - values)
        kept = set(acked_by[1]) & values
        assert not lost or max(kept, default=0) < lost[0], f"lost {lost}, yet later ones kept"
        assert -3 not in values
        wait_rows(address_of(data_dir, "reader-1"), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=90)

        # region 1 is an ordinary secondary again: a switchover to it loses nothing
        report = cli("region", "switchover", "--data-dir", data_dir, "--to", 1, "--json", timeout=240)
        assert report["rpo_lsns"] == 0 and report["to_region"] == 1
        promoted = sixfold.connect(report["new_writer_address"], autocommit=True)
        promoted.cursor().execute("INSERT INTO t (v) VALUES (-4)")
        rows = promoted.cursor().execute("SELECT id, v FROM t ORDER BY id").fetchall()
        promoted.close()
        assert [tuple(r) for r in rows] == [tuple(r) for r in expected] + [(rows[-1][0], -4)]
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(30)
        force_teardown(data_dir)
