"""Coordinators, automatic writer failover and the endpoint router, with real processes.

One cluster (six storage nodes, a writer, three readers, three coordinators) goes
through the whole story, because each step starts where the previous one left it:
writer SIGKILL under load -> a reader is promoted, writes resume through the same
writer endpoint; the new writer paused (SIGSTOP) -> another failover, and once
resumed it cannot commit and steps down; the coordinator leader killed -> a new
leader takes over; the first writer restarted with --coordinators comes back as a
reader; the leader killed in the middle of a failover -> the new leader finishes
that same failover; a planned failover loses nothing. After each step every
acknowledged write is checked.
"""

from __future__ import annotations

import time

import grpc
import pytest

import sixfold
from sixfold.nodes.coordinator.catalog import check_custom_endpoint
from sixfold.nodes.coordinator.control import stall_step
from sixfold.nodes.coordinator.router import custom_addresses, custom_targets, reader_targets, writer_target
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import coordinator_pb2 as copb
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
    # the first writer comes back, told by the catalog to be a reader (not to fence the current
    # writer); its promotions wait 2 s (fault injection), the window for the next step
    coordinators = ",".join(c.address for c in group.replicas if c.running)
    compute.writer.extra_args = [*compute.writer.extra_args, "--coordinators", coordinators,
                                 "--fault-promote-delay-s", "2"]
    compute.writer.spawn()
    group.wait(lambda c: any(i.name == "writer" and i.role == "reader" and i.health == "ok" for i in c.instances),
               30, "the first writer back as a reader")
    old_leader.spawn()   # three replicas again, so that one more can be lost
    old_leader.wait_healthy()
    deadline = time.monotonic() + 15
    while old_leader.catalog().writer != group.leader().catalog().writer or not old_leader.catalog().writer:
        assert time.monotonic() < deadline, "the restarted coordinator never caught up with the catalog"
        time.sleep(0.1)

    # 4. the coordinator leader killed in the middle of a failover: the new leader finishes the
    # same failover (one recovery: the epoch moves by exactly one), it does not start another
    current = node_by_name(compute, group.any_catalog().writer)
    epoch_before = group.any_catalog().epoch
    killed_at = time.monotonic()
    current.kill()
    promoting = group.wait(lambda c: c.failover.state == "promoting" and c.failover.from_instance == current.node_id,
                           10, "a failover in progress")
    assert promoting.failover.to_instance == "writer", "tier 0 is promoted first"
    leader = group.leader()
    leader.kill()
    recovered_s = work.first_ack_after(killed_at, FAILOVER_S_MAX)
    catalog = group.wait(lambda c: c.failover.state == "done" and c.failover.id == promoting.failover.id, 15,
                         "the new leader to finish the failover")
    assert group.leader() is not leader
    assert catalog.writer == "writer" and catalog.epoch == epoch_before + 1, catalog
    assert compute.writer.compute_stub().Status(cpb.StatusRequest(), timeout=2).epoch == epoch_before + 1
    print(f"failover finished by a new coordinator leader: {recovered_s:.2f}s")
    work.wait_acks(20)
    check_acked(group.writer_endpoint, list(work.acked))

    # 5. planned failover (asked at a follower, which forwards to the leader) loses nothing
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


def test_custom_endpoint_rules_are_pure():
    instances = {"w": {"address": "a:1", "role": "writer", "health": "ok"},
                 "r1": {"address": "b:1", "role": "reader", "health": "ok"},
                 "r2": {"address": "c:1", "role": "reader", "health": "unreachable"}}
    snap = {"writer": "w", "failover": None, "instances": instances,
            "custom": {"ro": {"type": "reader", "members": ["w", "r1", "r2"], "port_slot": 0},
                       "all": {"type": "any", "members": ["w", "r2"], "port_slot": 3}}}
    assert custom_targets(snap, "ro") == ["b:1"]          # not the writer, not an unhealthy reader
    assert custom_targets(snap, "all") == ["a:1"]
    assert custom_targets(snap, "gone") == []
    snap["failover"] = {"state": "promoting"}
    assert custom_targets(snap, "all") == []              # the writer is changing: wait, like the writer endpoint
    assert custom_addresses(snap, "h", 9000) == {"ro": "h:9000", "ro-pg": "h:9016", "all": "h:9003", "all-pg": "h:9019"}
    assert check_custom_endpoint(instances, snap["custom"], "x", "reader", ["r1"]) == ""
    for args, words in ((("writer", "reader", ["r1"]), "cluster endpoint"), (("r1", "reader", ["r1"]), "instance"),
                        (("ro", "reader", ["r1"]), "already exists"), (("x", "primary", ["r1"]), "type"),
                        (("x", "any", []), "at least one"), (("x", "any", ["nope"]), "no instance named nope"),
                        (("a b", "any", ["r1"]), "letters"), (("x-pg", "any", ["r1"]), "-pg suffix")):
        assert words in check_custom_endpoint(instances, snap["custom"], *args)


def _instances_behind(address: str, connections: int) -> set[str]:
    seen = set()
    for _ in range(connections):
        with sixfold.connect(address, autocommit=True, timeout_s=10) as conn:
            seen.add(conn.node_id)
    return seen


def test_custom_endpoints_route_only_to_their_members(region):
    compute, group = region
    with sixfold.connect(group.writer_endpoint, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    follower = next(c for c in group.replicas if c is not group.leader())
    channel, stub = follower.coordinator_stub()   # a follower: the change goes through the raft leader
    with channel:
        analytics = stub.CreateEndpoint(copb.CreateEndpointRequest(name="analytics", type="reader",
                                                                   members=["reader-2", "reader-3"]), timeout=10)
        mixed = stub.CreateEndpoint(copb.CreateEndpointRequest(name="mixed", type="any",
                                                               members=["writer", "reader-1"]), timeout=10)
        assert analytics.kind == "custom" and sorted(analytics.targets) == ["reader-2", "reader-3"]
        for name, kind, members, words in (("writer", "reader", ["reader-1"], "cluster endpoint"),
                                           ("analytics", "reader", ["reader-1"], "already exists"),
                                           ("x", "reader", ["nope"], "no instance named nope")):
            with pytest.raises(grpc.RpcError) as err:
                stub.CreateEndpoint(copb.CreateEndpointRequest(name=name, type=kind, members=members), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()
        # every replica's router listens within a maintenance pass of learning the endpoint
        group.wait(lambda cat: {e.name for e in cat.endpoints} >= {"analytics", "mixed"}, 10, "custom endpoints")
        time.sleep(0.5)
        assert _instances_behind(analytics.address, 12) == {"reader-2", "reader-3"}
        assert _instances_behind(mixed.address, 12) == {"writer", "reader-1"}
        with sixfold.connect(analytics.address, autocommit=True) as conn:
            with pytest.raises(sixfold.dbapi.ReadOnlyError):
                conn.execute("INSERT INTO t VALUES (1)")
        # reader-2 promoted: a "reader" endpoint routes only to its members that are still readers
        assert follower.failover("reader-2").failover.state == "done"
        group.wait(lambda cat: next(e for e in cat.endpoints if e.name == "analytics").targets == ["reader-3"],
                   10, "analytics to follow the promotion")
        assert _instances_behind(analytics.address, 6) == {"reader-3"}
        stub.DeleteEndpoint(copb.DeleteEndpointRequest(name="analytics"), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.DeleteEndpoint(copb.DeleteEndpointRequest(name="analytics"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    deadline = time.monotonic() + 10
    while True:  # every replica stops listening on a deleted endpoint
        try:
            sixfold.connect(analytics.address, timeout_s=2).close()
        except sixfold.dbapi.OperationalError:
            break
        assert time.monotonic() < deadline, "the deleted endpoint still accepts connections"
        time.sleep(0.2)


def test_writer_stall_is_pure():
    state, stalled = stall_step(None, vdl=10, issued_lsn=10, now_s=0.0)
    assert state is None and stalled == 0.0                     # nothing waits: not stalled
    state, stalled = stall_step(state, vdl=10, issued_lsn=12, now_s=1.0)
    assert state == (10, 1.0) and stalled == 0.0                # commits start waiting
    state, stalled = stall_step(state, vdl=10, issued_lsn=13, now_s=4.5)
    assert stalled == 3.5                                       # VDL has not moved since
    state, stalled = stall_step(state, vdl=11, issued_lsn=13, now_s=5.0)
    assert state == (11, 5.0) and stalled == 0.0                # VDL moved: a slow quorum, not a lost one
    assert stall_step(state, vdl=13, issued_lsn=13, now_s=9.0) == (None, 0.0)
