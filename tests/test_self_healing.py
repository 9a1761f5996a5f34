"""Storage self-healing with real processes: a storage node lost for good is replaced in
every PG that held it (a membership change by quorum sets), while writes go on.

Nine storage nodes (three per AZ), a writer, three coordinators that replace a storage
node after 3 s down. A steady insert load goes through the writer endpoint the whole
time. Node names are s1-<az>-<n>.

The last step is a fault check that fails without the replacements: placement puts
segment 0 (and every third segment) on nodes 1 and 2 of each AZ. After s1-1-1 and
s1-2-1 are replaced, losing s1-1-2 and s1-3-1 as well leaves 4 live members in every
PG, so writes commit. With the original membership, segment 0 would keep only s1-2-2
and s1-3-2: no write quorum, and no commit (page 1, in segment 0, changes on every
commit).
"""

from __future__ import annotations

import time

import grpc
import pytest

from sixfold.rpc import storage_pb2 as pb
from tests.compute_cluster import ComputeCluster
from tests.coordinator_cluster import CoordinatorGroup, Workload, check_acked

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPLACE_AFTER_S = 3.0
REPLACED_WITHIN_S = 90.0     # grace + detection + catch-up, on a loaded 2-core machine
WRITE_GAP_S_MAX = 8.0


def segment_states(storage, volume_id: str = "vol-1") -> dict[int, dict[str, pb.SegmentState]]:
    """segment -> {node address: its state}, from every live node."""
    out: dict[int, dict[str, pb.SegmentState]] = {}
    for node in storage.nodes:
        if not node.running:
            continue
        try:
            reply = node.stub().GetSegmentState(pb.SegmentStateRequest(volume_id=volume_id), timeout=2)
        except grpc.RpcError:
            continue
        for state in reply.segments:
            out.setdefault(state.segment, {})[node.address] = state
    return out


def unhealed(storage, lost: set[str]) -> list[str]:
    """Why some PG does not have six healthy, caught-up members without the lost nodes ([] when all do)."""
    problems = []
    live = {n.address for n in storage.nodes if n.running}
    for segment, states in sorted(segment_states(storage).items()):
        newest = max(states.values(), key=lambda s: s.membership_epoch)
        members = list(newest.members)
        if newest.next_members:
            problems.append(f"segment {segment}: still changing {members} -> {list(newest.next_members)}")
            continue
        if set(members) & lost:
            problems.append(f"segment {segment}: members {members} include a lost node")
            continue
        scls = {m: states[m].scl for m in members if m in live and m in states
                and states[m].membership_epoch == newest.membership_epoch}
        if len(scls) != 6 or len(set(scls.values())) != 1:
            problems.append(f"segment {segment}: membership {newest.membership_epoch} SCLs {scls}")
    return problems


def wait_healed(storage, group: CoordinatorGroup, work: Workload, lost_name: str, lost: set[str]) -> float:
    """Until the catalog calls the node replaced and every PG has six caught-up members
    (checked with the load paused, so that SCLs can be equal); returns the seconds it took."""
    started = time.monotonic()
    group.wait(lambda cat: any(s.name == lost_name and s.health == "replaced" for s in cat.storage),
               REPLACED_WITHIN_S, f"{lost_name} replaced")
    deadline = time.monotonic() + 30
    work.pause()
    try:
        while (problems := unhealed(storage, lost)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not problems, problems
    finally:
        work.resume()
    return time.monotonic() - started


def longest_write_gap_s(work: Workload, since: float, until: float) -> float:
    times = [t for t in list(work.ack_times) if since <= t <= until]
    points = [since, *times, until]
    return max(b - a for a, b in zip(points, points[1:]))


@pytest.fixture
def healing_region(storage_cluster_factory, tmp_path):
    storage = storage_cluster_factory(per_az=3)
    compute = ComputeCluster(tmp_path / "compute", storage, readers=0)
    group = CoordinatorGroup(tmp_path / "coordinators", compute, storage_replace_after_s=REPLACE_AFTER_S)
    try:
        compute.start()
        group.start()
        yield storage, compute, group
    finally:
        group.close()
        compute.close()


def test_lost_storage_nodes_are_replaced_while_writes_go_on(healing_region):
    storage, compute, group = healing_region
    with compute.writer.connect() as conn:
        conn.execute("CREATE TABLE acked (id INTEGER PRIMARY KEY, at REAL)")
    work = Workload(group.writer_endpoint).start()
    try:
        work.wait_acks(300, timeout_s=60)
        lost: set[str] = set()
        for name in ("s1-1-1", "s1-2-1"):
            node = storage.node(name)
            lost.add(node.address)
            killed_at = time.monotonic()
            node.kill()                      # for good: never restarted
            took_s = wait_healed(storage, group, work, name, lost)
            work.wait_acks(20)
            gap_s = longest_write_gap_s(work, killed_at, time.monotonic())
            print(f"{name}: replaced in every PG after {took_s:.1f} s; longest write gap {gap_s:.2f} s")
            assert gap_s < WRITE_GAP_S_MAX, f"writes stopped for {gap_s:.1f} s after {name} was lost"
        # new PGs avoid the lost nodes too: the catalog settles on both replaced
        group.wait(lambda cat: {s.name: s.health for s in cat.storage if s.health != "ok"} == {
            "s1-1-1": "replaced", "s1-2-1": "replaced"}, 20, "both lost nodes replaced")

        # two more nodes lost: fatal for segment 0 under its original membership (see above)
        for name in ("s1-1-2", "s1-3-1"):
            storage.kill(name)
        work.wait_acks(30, timeout_s=30)
    finally:
        acked = work.finish()
    check_acked(group.writer_endpoint, acked)
    errors = storage.errors()
    assert not errors, errors[:10]
