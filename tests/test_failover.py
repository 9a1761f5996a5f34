"""Coordinators, automatic writer failover and the endpoint router, with real processes.

One cluster (six storage nodes, a writer, three readers, three coordinators) goes
through the whole story, because each step starts where the previous one left it:
writer SIGKILL under load -> a reader is promoted, writes resume through the same
writer endpoint; the new writer paused (SIGSTOP) -> another failover, and once
resumed it cannot commit and steps down; the coordinator leader killed -> a new
leader takes over and a further failover works; the first writer restarted with
--coordinators comes back as a reader; a planned failover loses nothing. After
each step every acknowledged write is checked.
"""

from __future__ import annotations

import time

import grpc
import pytest

import sixfold
from sixfold.nodes.coordinator.router import reader_targets, writer_target
from sixfold.rpc import compute_pb2 as cpb
from tests.compute_cluster import ComputeCluster
from tests.coordinator_cluster import CoordinatorGroup, Workload, check_acked

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FAILOVER_S_MAX = 15.0


def node_by_name(compute: ComputeCluster, name: str):
    return next(n for n in compute.nodes if n.node_id == name)


@pytest.fixture
def region(storage_cluster, tmp_path):
    compute = ComputeCluster(tmp_path / "compute", storage_cluster, readers=3)
    group = CoordinatorGroup(tmp_path / "coordinators", compute)
    try:
        compute.start()
        group.start()
        yield compute, group
    finally:
        group.close()
        compute.close()


def test_failover_story(region):
    compute, group = region
    with sixfold.connect(group.writer_endpoint, autocommit=True) as conn:
        conn.execute("CREATE TABLE acked (id INTEGER PRIMARY KEY, at REAL)")
    work = Workload(group.writer_endpoint).start()
    work.wait_acks(20)

    # 1. writer SIGKILL under load: a reader is promoted, writes resume through the same address
    catalog = group.any_catalog()
    assert catalog.writer == "writer" and catalog.epoch >= 1
    killed_at = time.monotonic()
    compute.writer.kill()
    recovered_s = work.first_ack_after(killed_at, FAILOVER_S_MAX)
    catalog = group.wait(lambda c: c.writer != "writer" and c.failover.state == "done", 10, "failover")
    assert catalog.writer == "reader-1", "promotion tier decides (reader-1 has the lowest tier)"
    assert catalog.failover.from_instance == "writer" and catalog.epoch >= 2
    print(f"SIGKILL failover: first committed write {recovered_s:.2f}s after the kill")
    work.wait_acks(20)
    check_acked(group.writer_endpoint, list(work.acked))

    # readers follow the new writer: the reader endpoint sees new rows
    promoted = node_by_name(compute, catalog.writer)
    group.wait(lambda c: all(i.health == "ok" for i in c.instances if i.role == "reader"), 10, "healthy readers")
    last = work.acked[-1]
    deadline = time.monotonic() + 10
    while True:
        with sixfold.connect(group.reader_endpoint, autocommit=True) as conn:
            assert conn.role == "reader"
            if conn.execute("SELECT count(*) FROM acked WHERE id = ?", (last,)).fetchone()[0] == 1:
                break
        assert time.monotonic() < deadline, "the reader endpoint never saw the new writer's rows"
        time.sleep(0.2)

    # 2. the new writer paused: another failover; resumed, it cannot commit and steps down
    paused_at = time.monotonic()
    promoted.pause()
    recovered_s = work.first_ack_after(paused_at, FAILOVER_S_MAX)
    catalog = group.wait(lambda c: c.writer not in ("writer", promoted.node_id) and c.failover.state == "done",
                         10, "second failover")
    print(f"SIGSTOP failover: first committed write {recovered_s:.2f}s after the pause")
    promoted.resume()
    try:
        with sixfold.connect(promoted.address, autocommit=True, timeout_s=15) as stale:
            try:
                stale.execute("INSERT INTO acked (id, at) VALUES (?, ?)", (-1, 0.0))
            except sixfold.dbapi.Error:
                pass
            else:
                with sixfold.connect(group.writer_endpoint, autocommit=True) as conn:
                    there = conn.execute("SELECT count(*) FROM acked WHERE id = -1").fetchone()[0]
                pytest.fail(f"the old writer committed (LSN {stale.last_commit_lsn}, in the new writer's view: "
                            f"{there}); catalog {group.any_catalog()}\n--- old writer log\n{promoted.log_tail(60)}")
    except sixfold.dbapi.OperationalError as exc:
        assert "cannot reach" in str(exc)   # it already stepped down and exited
    # it steps down: fenced in its Status until it exits (it is told to by the coordinator)
    deadline = time.monotonic() + 10
    while promoted.running:
        try:
            status = promoted.compute_stub().Status(cpb.StatusRequest(), timeout=1)
            assert status.health == "fenced", status
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, "the fenced writer did not step down"
        time.sleep(0.1)
    work.wait_acks(20)
    check_acked(group.writer_endpoint, list(work.acked))
    with sixfold.connect(group.writer_endpoint, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM acked WHERE id = -1").fetchone()[0] == 0

    # 3. the coordinator leader killed: a new leader takes over, and a failover still works
    old_leader = group.leader()
    old_leader.kill()
    new_leader = None
    deadline = time.monotonic() + 15
    while new_leader is None:
        try:
            new_leader = group.leader()
        except RuntimeError:
            assert time.monotonic() < deadline, "no new coordinator leader"
            time.sleep(0.1)
    assert new_leader is not old_leader
    # the first writer comes back, told by the catalog to be a reader (not to fence the current writer)
    coordinators = ",".join(c.address for c in group.replicas if c.running)
    compute.writer.extra_args = [*compute.writer.extra_args, "--coordinators", coordinators]
    compute.writer.spawn()
    group.wait(lambda c: any(i.name == "writer" and i.role == "reader" and i.health == "ok" for i in c.instances),
               30, "the first writer back as a reader")
    current = node_by_name(compute, group.any_catalog().writer)
    killed_at = time.monotonic()
    current.kill()
    recovered_s = work.first_ack_after(killed_at, FAILOVER_S_MAX)
    catalog = group.wait(lambda c: c.writer != current.node_id and c.failover.state == "done", 10,
                         "failover under the new leader")
    print(f"failover under a new coordinator leader: {recovered_s:.2f}s")
    work.wait_acks(20)
    check_acked(group.writer_endpoint, list(work.acked))

    # 4. planned failover (asked at a follower, which forwards to the leader) loses nothing
    group.wait(lambda c: len(reader_targets_of(c)) >= 1, 10, "a healthy reader")
    follower = next(c for c in group.replicas if c.running and c is not group.leader())
    before = group.any_catalog().writer
    reply = follower.failover("")
    assert reply.failover.state == "done" and reply.failover.to_instance != before
    work.wait_acks(20)
    acked = work.finish()
    check_acked(group.writer_endpoint, acked)
    assert len(acked) > 100


def reader_targets_of(catalog) -> list[str]:
    return [i.name for i in catalog.instances if i.role == "reader" and i.health == "ok"]


def test_router_targets_are_pure():
    snap = {"writer": "w", "failover": None, "instances": {
        "w": {"address": "a:1", "role": "writer", "health": "ok"},
        "r1": {"address": "b:1", "role": "reader", "health": "ok"},
        "r2": {"address": "c:1", "role": "reader", "health": "unreachable"}}}
    assert writer_target(snap) == "a:1"
    assert reader_targets(snap) == ["b:1"]
    snap["failover"] = {"state": "promoting"}
    assert writer_target(snap) is None   # new connections wait for the new writer
