"""`sixfold region switchover|failover`: moving the primary role to another region (DESIGN.md).

The I/O shell of a role change in the local runtime. The order of its steps is what makes it
safe; what each step decides is in `roles.py` (pure):

switchover --to R (planned, RPO 0):
  1. record the change (regions.json): from here no region's coordinators promote anybody, and a
     compute node restarted in the old primary comes back as a reader (hazards 1 and 2);
  2. fence the old primary P: a recovery of P's storage by the switchover itself (epoch E+1). The
     old writer's appends are refused from now on; the recovery's VDL F holds every commit it
     acknowledged. Every member of every PG is told F as its vdl_hint (_tell_vdl);
  3. wait until R's replicator has shipped up to F under E+1;
  4. R's coordinators promote a reader of R (recovery in R at E+2, VDL F: nothing is truncated);
  5. record P as a secondary of R: the supervisor stops R's replicator and starts P's, from the
     durable position F (written first); P's coordinators name P's replicator their writer, the
     old writer steps down and restarts as a reader; the switchover returns once it answers as one
     (`old_writers_reading` in the report names it: its clients see a short outage, then a reader).
  With three or more regions, the other secondaries reach F in step 3 too (their durable
  positions included), R's storage keeps the records arriving from the fence on for them, and
  the supervisor restarts their replicators with R's storage as the source after step 5.

failover --to R --allow-data-loss (unplanned: P is gone or cut off):
  1. record the change; the supervisor stops R's replicator for good: it grants the old
     primary's writer no more leases (lease.py);
  2. wait `lease_s` + a margin after it is gone: no lease the old writer holds is valid then, so
     it acknowledges nothing from here on, wherever it is;
  3. R's coordinators promote a reader of R at R's VDL S (recovery in R truncates above S);
  4. record R as the primary and P (and any other secondary: it may hold a tail R never had) as
     regions that need a resync (their replicators do not run:
     P's storage may have materialised its divergent tail above S, which a truncation below the
     materialised point cannot undo; see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Callable

import grpc

from sixfold.globaldb.roles import FAILOVER, SWITCHOVER, RegionRoles, load_roles, roles_path, save_roles
from sixfold.globaldb.roles import other_secondaries, switch_problem, rpo_of
from sixfold.runtime.commands import default_roles
from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.probe import STEPPED_DOWN_TIMEOUT_S, answering_as_writer, wait_serving_as_readers
from sixfold.runtime.topology import (COMPUTE, COORDINATOR, REPLICATOR, STORAGE, NodeSpec, in_region,
                                      router_addresses, storage_node_infos)

Progress = Callable[[str], None]

APPLIED_TIMEOUT_S = 20.0      # every region's coordinators apply a roles record within this
SHIPPED_TIMEOUT_S = 60.0      # the target's replicator reaches the fence's VDL within this
PROMOTE_TIMEOUT_S = 120.0
REPLICATOR_GONE_TIMEOUT_S = 30.0
LEASE_MARGIN_S = 0.5          # beyond lease_s: clock rate differences, the lease RPC's own time


class SwitchFailed(Exception):
    """The role change could not go on; `roles` is where it stopped (for the message)."""


def _compute_status(address: str, timeout_s: float = 1.0):
    from sixfold.nodes.coordinator.control import compute_status

    return compute_status(address, timeout_s)


def _catalogs(nodes: list[NodeSpec], region: int, timeout_s: float = 1.0) -> list:
    from sixfold.rpc import coordinator_pb2 as copb
    from sixfold.rpc import coordinator_pb2_grpc

    out = []
    for n in in_region(nodes, region):
        if n.kind != COORDINATOR:
            continue
        with grpc.insecure_channel(n.address) as channel:
            try:
                out.append(coordinator_pb2_grpc.CoordinatorStub(channel).GetCatalog(copb.CatalogRequest(),
                                                                                   timeout=timeout_s))
            except grpc.RpcError:
                pass
    return out


def _wait(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SwitchFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


class RoleChange:
    """One switchover or failover; `report` is what `--json` prints."""

    def __init__(self, cdir: ClusterDir, state: dict, nodes: list[NodeSpec], progress: Progress) -> None:
        self.cdir, self.state, self.nodes, self.progress = cdir, state, nodes, progress
        self.path = roles_path(cdir.root)
        self.roles = load_roles(self.path, default_roles(nodes))
        self.t0 = time.monotonic()
        self.report: dict = {"phases": []}

    def phase(self, name: str, **detail) -> None:
        elapsed_s = round(time.monotonic() - self.t0, 3)
        self.report["phases"].append({"phase": name, "at_s": elapsed_s, **detail})
        self.progress(f"[{elapsed_s:6.2f} s] {name}" + (f" ({', '.join(f'{k} {v}' for k, v in detail.items())})"
                                                       if detail else ""))

    def node(self, kind: str, region: int) -> NodeSpec:
        return next(n for n in self.nodes if n.kind == kind and n.region == region)

    def save(self, roles: RegionRoles) -> None:
        save_roles(self.path, roles)
        self.roles = roles

    def wait_applied(self, regions: list[int]) -> None:
        """Every listed region's coordinators have applied the current record (a region whose
        coordinators are all unreachable is left out: they read the file when they return)."""
        generation = self.roles.generation

        def applied() -> bool:
            for region in regions:
                catalogs = _catalogs(self.nodes, region)
                if catalogs and not any(c.regions_generation >= generation for c in catalogs):
                    return False
            return True

        _wait(applied, APPLIED_TIMEOUT_S, f"the coordinators to apply region roles #{generation}")

    def promote(self, region: int, min_epoch: int = 0) -> tuple[str, str, int]:
        """R's coordinators promote their best reader (tier, then least lag): (name, address, epoch)."""
        from sixfold.rpc import coordinator_pb2 as copb
        from sixfold.rpc import coordinator_pb2_grpc

        last = "no coordinator of the region answered"
        deadline = time.monotonic() + PROMOTE_TIMEOUT_S
        while time.monotonic() < deadline:
            for n in in_region(self.nodes, region):
                if n.kind != COORDINATOR:
                    continue
                with grpc.insecure_channel(n.address) as channel:
                    try:
                        reply = coordinator_pb2_grpc.CoordinatorStub(channel).Failover(
                            copb.FailoverRequest(target="", min_epoch=min_epoch), timeout=PROMOTE_TIMEOUT_S)
                    except grpc.RpcError as exc:
                        last = f"{n.name}: {exc.code().name} {exc.details()}"
                        continue
                f = reply.failover
                if f.state == "done":
                    address = next(x.address for x in self.nodes if x.name == f.to_instance)
                    return f.to_instance, address, f.epoch
                last = f"{n.name}: failover {f.id} {f.state}: {f.reason}"
            time.sleep(0.5)
        raise SwitchFailed(f"promoting a reader of region {region} failed: {last}")

    def writer_endpoint(self, region: int) -> str:
        return router_addresses(in_region(self.nodes, region)).get("writer", "")

    def region_list(self) -> list[int]:
        return sorted({n.region for n in self.nodes})

    def instances(self, region: int) -> list[tuple[str, str]]:
        """The region's compute instances: (name, address)."""
        return [(n.name, n.address) for n in in_region(self.nodes, region) if n.kind == COMPUTE]


def _retain_for(storage: list[NodeSpec], replicators: list[str], lsn: int, volume_id: str) -> None:
    """Each storage node keeps the records above `lsn` for these replicators (as their own polls
    ask it to: GetSegmentState with shipping_to) until they ask themselves."""
    from sixfold.rpc import storage_pb2 as spb
    from sixfold.rpc import storage_pb2_grpc

    for n in storage:
        if n.kind != STORAGE:
            continue
        with grpc.insecure_channel(n.address) as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            for name in replicators:
                try:
                    stub.GetSegmentState(spb.SegmentStateRequest(volume_id=volume_id, shipping_to=name,
                                                                 shipped_lsn=lsn), timeout=2.0)
                except grpc.RpcError:
                    pass   # a node down now: the replicator's own polls register it there


async def _tell_vdl(client, recovered, owner: str) -> None:
    """Every member of every PG learns the fence's VDL as its vdl_hint (what a replicator ships up
    to): an empty append naming the segment. A stream's VDL-only heartbeat would not do: storage
    applies it only to segments that stream has named before, and the fence's has named none."""
    from sixfold.client.convert import truncations_to_pb
    from sixfold.client.recovery import _append_once
    from sixfold.rpc import storage_pb2 as spb

    calls = []
    for segment, membership in sorted(recovered.segment_memberships.items()):
        request = spb.AppendRequest(
            batch_seq=1, volume_id=client.settings.volume_id, volume_epoch=recovered.epoch, writer_id=owner,
            vdl_hint=recovered.vdl, truncations=truncations_to_pb(recovered.history),
            segments=[spb.SegmentAppend(segment=segment, records=b"", members=list(membership.members))])
        calls += [_append_once(client.pool, member, request, client.settings.rpc_timeout_s)
                  for member in membership.all_members()]
    await asyncio.gather(*calls)


def switchover(cdir: ClusterDir, state: dict, nodes: list[NodeSpec], to_region: int, progress: Progress) -> dict:
    from sixfold.client.quorum import ClientSettings, QuorumClient
    from sixfold.globaldb.replicator import Position, load_position, save_position

    change = RoleChange(cdir, state, nodes, progress)
    roles = change.roles
    problem = switch_problem(roles, change.region_list(), to_region, SWITCHOVER)
    if problem:
        raise ValueError(problem)
    old, spec = roles.primary, state["spec"]
    target_replicator = change.node(REPLICATOR, to_region)
    # the other secondaries reach the fence too, then follow the new primary from there
    followers = [change.node(REPLICATOR, r) for r in other_secondaries(roles, change.region_list(), to_region)]
    status = _compute_status(target_replicator.address)
    if status is None or status.health != "ok":
        raise SwitchFailed(f"{target_replicator.name} is not shipping ({status.health if status else 'unreachable'}); "
                           f"a switchover needs it (`sixfold status`), or fail over with --allow-data-loss")
    switch_id = uuid.uuid4().hex[:8]
    change.report.update(kind=SWITCHOVER, id=switch_id, from_region=old, to_region=to_region,
                         old_writer=roles.writer)
    old_writers = answering_as_writer(change.instances(old))   # they step down at step 5
    resumed = bool(roles.change)
    change.save(roles.begin(SWITCHOVER, to_region))
    try:
        change.wait_applied(change.region_list())
    except SwitchFailed:
        if not resumed:   # nothing is fenced yet: the old primary takes writes again
            change.save(change.roles.abandon())
        raise
    change.phase("no region promotes on its own now" + (" (resuming an unfinished switchover)" if resumed else ""),
                 generation=change.roles.generation)

    # 2-3: fence the old primary; its recovery's VDL holds every acknowledged commit; ship it to R
    settings = ClientSettings(volume_id=spec.get("volume_id", "vol-1"),
                              pages_per_segment=int(spec.get("pages_per_segment", 256)), vdl_hint_interval_s=0.01)
    owner = f"switchover-{switch_id}"

    # the followers will fetch from R's storage once they follow it: what lies above F, and the
    # fence's re-stamped copies below F (their recorded positions hold the old copies), which reach
    # R only after the fence. From now on R's storage keeps every record that arrives, for them
    _retain_for(in_region(nodes, to_region), [f.name for f in followers], 0, settings.volume_id)

    async def fence_and_ship():
        client = QuorumClient(storage_node_infos(in_region(nodes, old)), owner, settings)
        recovered = await client.open_writer()
        change.phase(f"fenced region {old}", epoch=recovered.epoch, vdl=recovered.vdl,
                     discarded_lsns=recovered.discarded_lsns)
        await _tell_vdl(client, recovered, owner)
        try:
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + SHIPPED_TIMEOUT_S
            shipped = None
            for replicator in [target_replicator, *followers]:
                while True:
                    s = await loop.run_in_executor(None, _compute_status, replicator.address, 1.0)
                    # a follower restarts from its durable position: that must be at the fence too
                    if (s is not None and s.vdl >= recovered.vdl and s.epoch >= recovered.epoch
                            and (replicator is target_replicator
                                 or load_position(cdir.node_data(replicator.name)).vdl >= recovered.vdl)):
                        shipped = shipped or s
                        break
                    if time.monotonic() > deadline:
                        raise SwitchFailed(f"{replicator.name} did not ship up to LSN {recovered.vdl} within "
                                           f"{SHIPPED_TIMEOUT_S:.0f} s (at {s.vdl if s else '?'}); region {old} is "
                                           f"fenced and no region takes writes: run the switchover again")
                    await asyncio.sleep(0.02)
            return recovered, shipped
        finally:
            await client.close()

    recovered, shipped = asyncio.run(fence_and_ship())
    change.phase(f"region {to_region} holds everything up to the fence", vdl=shipped.vdl, epoch=shipped.epoch)

    # P's replicator will start at F (P's storage holds everything to F): recorded before the
    # promotion, so that the promotion and the record of it are as close together as can be
    old_replicator = change.node(REPLICATOR, old)
    data_dir = cdir.node_data(old_replicator.name)
    data_dir.mkdir(parents=True, exist_ok=True)
    save_position(data_dir, Position(recovered.vdl, dict(recovered.segment_tails), recovered.epoch, owner,
                                     recovered.history))

    # 4: promote a reader of R (recovery in R at a higher epoch: VDL F, nothing truncated)
    writer, writer_address, epoch = change.promote(to_region, min_epoch=recovered.epoch + 1)
    change.phase(f"promoted {writer}", epoch=epoch)

    # 5: P becomes a secondary of R
    record = {"kind": SWITCHOVER, "id": switch_id, "from_region": old, "to_region": to_region,
              "old_writer": roles.writer, "new_writer": writer, "fence_epoch": recovered.epoch,
              "fence_vdl": recovered.vdl, "epoch": epoch, "unix_s": time.time()}
    change.save(change.roles.finish(writer, writer_address, change.writer_endpoint(to_region), record))
    change.wait_applied(change.region_list())
    change.phase(f"region {to_region} is the primary; region {old} is its secondary",
                 generation=change.roles.generation)
    _wait(lambda: (s := _compute_status(old_replicator.address)) is not None and s.vdl >= recovered.vdl,
          SHIPPED_TIMEOUT_S, f"{old_replicator.name} to start shipping from region {to_region}")
    change.phase(f"{old_replicator.name} ships region {to_region}'s log into region {old}")
    for follower in followers:   # the supervisor restarted it with region R's storage as its source
        _wait(lambda: (s := _compute_status(follower.address)) is not None and s.health == "ok" and s.epoch >= epoch,
              SHIPPED_TIMEOUT_S, f"{follower.name} to ship from region {to_region}")
        change.phase(f"{follower.name} ships region {to_region}'s log into region {follower.region}")
    reading = wait_serving_as_readers(old_writers)
    late = [name for name, _ in old_writers if name not in reading]
    change.phase(f"{', '.join(late)} did not come back as a reader within {STEPPED_DOWN_TIMEOUT_S:.0f} s: "
                 f"see `sixfold status`" if late else f"the old writer serves reads in region {old}",
                 old_writers=", ".join(name for name, _ in old_writers) or "none answered as the writer")
    change.report.update(old_writers_reading=reading, new_writer=writer, new_writer_address=writer_address,
                         epoch=epoch,
                         fence_epoch=recovered.epoch, fence_vdl=recovered.vdl, rpo_lsns=0,
                         followers=[f.region for f in followers],
                         duration_s=round(time.monotonic() - change.t0, 3))
    return change.report


def failover(cdir: ClusterDir, state: dict, nodes: list[NodeSpec], to_region: int, progress: Progress) -> dict:
    change = RoleChange(cdir, state, nodes, progress)
    roles = change.roles
    problem = switch_problem(roles, change.region_list(), to_region, FAILOVER)
    if problem:
        raise ValueError(problem)
    old = roles.primary
    resync = (old, *other_secondaries(roles, change.region_list(), to_region))
    lease_s = float(state.get("tuning", {}).get("lease_s", 2.0))
    replicator = change.node(REPLICATOR, to_region)
    before = _compute_status(replicator.address)
    switch_id = uuid.uuid4().hex[:8]
    change.report.update(kind=FAILOVER, id=switch_id, from_region=old, to_region=to_region, old_writer=roles.writer)
    # 1: no promotions anywhere, and R's replicator stops for good (no more leases for the old writer)
    change.save(roles.begin(FAILOVER, to_region))   # (the same record when an unfinished failover goes on)
    change.phase(f"recorded: failing over to region {to_region}; {replicator.name} stops",
                 generation=change.roles.generation)

    def replicator_gone() -> bool:
        entry = next((n for n in (change.cdir.read_state() or {}).get("nodes", []) if n["name"] == replicator.name),
                     {})
        return entry.get("state") == "standby" and _compute_status(replicator.address, 0.3) is None

    last = before
    deadline = time.monotonic() + REPLICATOR_GONE_TIMEOUT_S
    while not replicator_gone():   # (its last answers give the RPO)
        last = _compute_status(replicator.address, 0.3) or last
        if time.monotonic() > deadline:
            raise SwitchFailed(f"{replicator.name} did not stop within {REPLICATOR_GONE_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    gone_at = time.monotonic()
    change.phase(f"{replicator.name} is gone: it grants no lease; waiting {lease_s + LEASE_MARGIN_S:.1f} s "
                 f"for the old primary's to run out")
    change.wait_applied([r for r in change.region_list() if r != old])
    time.sleep(max(0.0, gone_at + lease_s + LEASE_MARGIN_S - time.monotonic()))
    change.phase("no lease of the old primary's writer is valid now")

    writer, writer_address, epoch = change.promote(to_region)
    promoted = _compute_status(writer_address, 2.0)
    region_vdl = last.vdl if last is not None else 0
    if last is not None:
        rpo = rpo_of(last.source_vdl, region_vdl, last.region_lag_ms_last, last.source_seen_unix_s)
    else:   # the replicator never answered: nobody in this region knows what the primary had
        rpo = {"rpo_lsns": None, "rpo_lag_s": None, "primary_last_heard_unix_s": None,
               "primary_vdl_last_heard": None}
    change.phase(f"promoted {writer}", epoch=epoch, vdl=promoted.vdl if promoted else None)
    record = {"kind": FAILOVER, "id": switch_id, "from_region": old, "to_region": to_region,
              "old_writer": roles.writer, "new_writer": writer, "epoch": epoch, "promoted_at_lsn": region_vdl,
              "needs_resync": list(resync), "unix_s": time.time(), **rpo}
    change.save(change.roles.finish(writer, writer_address, change.writer_endpoint(to_region), record,
                                    resync=resync))
    change.wait_applied([r for r in change.region_list() if r != old])
    change.phase(f"region {to_region} is the primary; region(s) {', '.join(map(str, resync))} need a resync "
                 f"before they rejoin", generation=change.roles.generation)
    change.report.update(new_writer=writer, new_writer_address=writer_address, epoch=epoch,
                         promoted_at_lsn=region_vdl, needs_resync=list(resync), **rpo,
                         duration_s=round(time.monotonic() - change.t0, 3))
    return change.report
