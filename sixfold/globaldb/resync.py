"""`sixfold region resync R`: a region failed over from rejoins as a secondary (DESIGN.md, "Resync"),
and a secondary whose replicator reports needs-resync (the primary collected records it had not
shipped yet) is seeded again.

The I/O shell (local runtime); what may start is `roles.resync_problem` (pure). The old primary's
storage holds a divergent tail above the promotion point that it may have materialised, which no
truncation can undo, so the region's storage is discarded whole and seeded again from the
primary's page images by its replicator (seeding.py):

1. take the primary writer's VDL: the resync is done once R holds at least that much;
2. stop R's compute instances, storage nodes and replicator (chaos-down markers: the supervisor
   does not start them again while the marker is there; SIGKILL: their data is discarded anyway);
3. discard R's storage data dirs and the replicator's (its position goes with them);
4. record R as joining (`roles.join`): its replicator runs, the primary writer owes it no lease,
   nobody may promote it (a secondary that owed a lease is recorded joining before step 2: its
   storage holds no divergent tail, and the primary's commits must not wait for its lease);
5. start R's storage nodes, then its replicator and instances (the markers go): the replicator
   finds an empty region and a primary that collected its log, and seeds it;
6. wait until R's replicator reports health ok and a VDL at or above the one taken in step 1, then
   record R as joined (`roles.joined`): from then on the primary writer needs R's lease again, and
   R can be switched over to.

A failure anywhere leaves the markers removed (R's nodes run again); before step 4 R still needs a
resync, after it R is joining; running the command again starts over from step 1 either way.
"""

from __future__ import annotations

import shutil
import signal
import time

from sixfold.globaldb.roles import resync_problem
from sixfold.globaldb.switch import Progress, RoleChange, SwitchFailed, _compute_status
from sixfold.runtime import procs
from sixfold.runtime.layout import MARKER_DOWN, MARKER_PAUSED, ClusterDir
from sixfold.runtime.topology import COMPUTE, REPLICATOR, STORAGE, NodeSpec, in_region

STOP_TIMEOUT_S = 20.0          # R's nodes are gone, and the supervisor knows it, within this
STORAGE_READY_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 300.0     # R's replicator seeds and reaches the primary's VDL within this
STOPPED_STATES = ("down", "standby", "stopped")


def resync(cdir: ClusterDir, state: dict, nodes: list[NodeSpec], region: int, progress: Progress) -> dict:
    from sixfold.runtime.local import wait_ready

    change = RoleChange(cdir, state, nodes, progress)
    replicator = change.node(REPLICATOR, region)
    shipping = _compute_status(replicator.address, 1.0)
    problem = resync_problem(change.roles, change.region_list(), region, shipping.health if shipping else "")
    if problem:
        raise ValueError(problem)
    roles = change.roles
    writer = _compute_status(roles.writer_address, 2.0) if roles.writer_address else None
    if writer is None or writer.role != "writer":
        raise SwitchFailed(f"the primary's writer {roles.writer} ({roles.writer_address or 'no address'}) does not "
                           f"answer as the writer: a resync catches up with it, so it must run")
    target_vdl = writer.vdl
    change.report.update(kind="resync", region=region, primary=roles.primary, primary_vdl_at_start=target_vdl)
    change.phase(f"resyncing region {region} from region {roles.primary}", primary_vdl=target_vdl)

    mine = [n for n in in_region(nodes, region) if n.kind in (STORAGE, COMPUTE, REPLICATOR)]
    storage = [n for n in mine if n.kind == STORAGE]
    for n in mine:   # before any signal: the supervisor must not start them again
        cdir.set_marker(n.name, MARKER_DOWN, "region resync")
        cdir.clear_marker(n.name, MARKER_PAUSED)
    if region not in roles.needs_resync and region not in roles.joining:
        # a secondary that owes the writer a lease (its replicator fell too far behind): waived
        # before its replicator stops, or commits wait until step 4. Its storage holds no divergent
        # tail (it never was the primary), so its replicator may ship there again if this stops here
        change.save(roles.join(region))
        change.phase(f"recorded region {region} as joining: the primary's writer owes it no lease",
                     generation=change.roles.generation)
    try:
        _stop(cdir, mine)
        change.phase(f"stopped region {region}'s {len(storage)} storage node(s), its instances and {replicator.name}")
        discarded = []
        for n in storage + [replicator]:
            data = cdir.node_data(n.name)
            if data.exists():
                shutil.rmtree(data)
                discarded.append(n.name)
        change.phase(f"discarded the data of {', '.join(discarded) or 'nothing'} (any divergent tail with it)")
        change.save(change.roles.join(region))
        change.phase(f"recorded region {region} as joining: it ships, owes no lease, cannot be promoted",
                     generation=change.roles.generation)
    finally:
        for n in storage:
            cdir.clear_marker(n.name, MARKER_DOWN)
        not_ready = wait_ready(cdir, [n.name for n in storage], STORAGE_READY_TIMEOUT_S)
        for n in mine:
            cdir.clear_marker(n.name, MARKER_DOWN)
    if not_ready:
        raise SwitchFailed(f"{', '.join(not_ready)} did not start within {STORAGE_READY_TIMEOUT_S:.0f} s; region "
                           f"{region} is joining: run the resync again")
    change.phase(f"started region {region}'s storage (empty), {replicator.name} and its instances")

    seeded_lsn, health = 0, ""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        s = _compute_status(replicator.address, 1.0)
        if s is not None and s.health != health:
            health = s.health
            change.phase(f"{replicator.name}: {health}", vdl=s.vdl, primary_vdl=s.source_vdl,
                         seeded_lsn=s.seeded_lsn)
        if s is not None and s.seeded_lsn:
            seeded_lsn = s.seeded_lsn
        if s is not None and s.health == "ok" and s.vdl >= target_vdl:
            break
        if time.monotonic() > deadline:
            raise SwitchFailed(f"{replicator.name} did not reach LSN {target_vdl} within {CATCH_UP_TIMEOUT_S:.0f} s "
                               f"({f'{s.health}, at {s.vdl}' if s else 'unreachable'}); region {region} is "
                               f"joining: run the resync again")
        time.sleep(0.2)
    change.phase(f"region {region} holds everything up to the primary's VDL at the start", vdl=s.vdl)
    change.save(change.roles.joined(region))
    change.phase(f"region {region} is a secondary of region {roles.primary} again", generation=change.roles.generation)
    change.report.update(seeded_lsn=seeded_lsn, vdl=s.vdl, discarded=discarded,
                         duration_s=round(time.monotonic() - change.t0, 3))
    return change.report


def _stop(cdir: ClusterDir, targets: list[NodeSpec]) -> None:
    """SIGKILLs the targets (marked down already) and waits until the supervisor recorded each as
    not running: from then on it does not start them while the marker is there."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    names = {n.name for n in targets}
    while True:
        entries = [e for e in (cdir.read_state() or {}).get("nodes", []) if e["name"] in names]
        running = [e for e in entries if procs.belongs_to(e.get("pid"), cdir.root)]
        for e in running:
            procs.signal_ours(e["pid"], signal.SIGCONT, cdir.root)   # (a paused node dies as well)
            procs.signal_ours(e["pid"], signal.SIGKILL, cdir.root)
        if not running and all(e.get("state") in STOPPED_STATES for e in entries):
            return
        if time.monotonic() > deadline:
            left = sorted(e["name"] for e in entries if e.get("state") not in STOPPED_STATES or e in running)
            raise SwitchFailed(f"{', '.join(left)} did not stop within {STOP_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
