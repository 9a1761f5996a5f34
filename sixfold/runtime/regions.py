"""`sixfold region add|remove` on a running local cluster (sixfold/globaldb/DESIGN.md, "Adding and
removing a region").

Add: the region roles first list the new region as *joining* (its replicator runs; the primary
writer owes it no lease and nobody may promote it), then the supervisor starts its nodes, its
replicator seeds its empty storage from the primary and ships; once it has caught up with the
primary's VDL taken when the add began, the region joins for good: from then on the primary writer
acknowledges a commit only under its lease too, so it can be failed over to.

Remove: the roles drop the region first (the writer stops asking its replicator for a lease, so
stopping it cannot stall commits), then the supervisor stops its nodes and its copies are deleted.
The primary region cannot be removed: switch over first.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from typing import Callable

from sixfold.globaldb.roles import RegionRoles, load_roles, region_change_problem, roles_path, save_roles
from sixfold.runtime import procs
from sixfold.runtime.commands import default_roles
from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.local import (RuntimeFailure, UsageProblem, node_entries, node_specs, refuse_in_docker,
                                   refuse_while_partitioned, require_running, wait_for, wait_ready)
from sixfold.runtime.topology import REGIONS_MAX, REPLICATOR, ClusterSpec, in_region, region_nodes

Progress = Callable[[str], None]

JOIN_TIMEOUT_S = 300.0   # the new region's replicator reaches the primary's VDL of the moment the add began
NODES_READY_TIMEOUT_S = 90.0


def _compute_status(address: str, timeout_s: float = 1.0):
    from sixfold.nodes.coordinator.control import compute_status

    return compute_status(address, timeout_s)


def _global_cluster(cdir: ClusterDir) -> tuple[dict, ClusterSpec]:
    state = require_running(cdir)
    refuse_in_docker(state, "adding or removing a region")
    spec = ClusterSpec.from_dict(state["spec"])
    if spec.regions < 2:
        # its writer runs without the lease the secondary regions grant (lease.py), so a region
        # added to it could never be failed over to safely
        raise UsageProblem("region add|remove is for global clusters: start one with `sixfold up --regions 2` "
                           "(or more); a one-region cluster's writer does not run the cross-region lease")
    refuse_while_partitioned(cdir)
    return state, spec


def add_region(cdir: ClusterDir, progress: Progress) -> dict:
    t0 = time.monotonic()
    with cdir.cli_locked():
        state, spec = _global_cluster(cdir)
        nodes = node_specs(state)
        path = roles_path(cdir.root)
        roles = _roles(path, nodes)
        region = spec.regions + 1
        problem = region_change_problem(roles, spec.region_numbers(), region, adding=True)
        if not problem and region > REGIONS_MAX:
            problem = f"region numbers go up to {REGIONS_MAX} (numbers of removed regions are not reused)"
        if problem:
            raise UsageProblem(problem)
        new_spec = dataclasses.replace(spec, regions=region)
        added = region_nodes(new_spec, region)
        taken = [n.address for n in added if procs.port_taken(n.host, n.port)]
        if taken:
            raise UsageProblem(f"{', '.join(taken)} taken by other processes; free them and retry")
        replicator = next(n for n in added if n.kind == REPLICATOR)
        primary_vdl = _primary_vdl(roles.writer_address)
        save_roles(path, roles.with_region(region, replicator.address))
        progress(f"region {region} joins: starting {len(added)} nodes (127.{region}.<az>.<n>); the primary "
                 f"writer owes it no lease until it has caught up")
        cdir.post_request({"action": "add-region", "nodes": [n.to_dict() for n in added], "spec": new_spec.to_dict()})
        names = [n.name for n in added]
        wait_for(cdir, lambda: set(names) <= set(node_entries(cdir)), f"the supervisor to start region {region}")
        problems = wait_ready(cdir, names, NODES_READY_TIMEOUT_S)
        if problems:
            raise RuntimeFailure(f"region {region}'s nodes did not all become healthy within "
                                 f"{NODES_READY_TIMEOUT_S:.0f} s (not: {', '.join(problems)}); it stays joining: take it out with "
                                 f"`sixfold region remove {region}`")
        progress(f"region {region}'s nodes are up; {replicator.name} ships towards the primary's VDL {primary_vdl}")
        status = _wait_caught_up(replicator.address, primary_vdl, region)
        save_roles(path, load_roles(path, roles).joined(region))
        progress(f"region {region} has joined: the primary writer acknowledges commits under its lease too")
    return {"region": region, "nodes": names, "replicator": replicator.name, "vdl": status.vdl,
            "primary_vdl_at_start": primary_vdl, "duration_s": round(time.monotonic() - t0, 3)}


def _roles(path, nodes) -> RegionRoles:
    """The roles, with every region's replicator listed (a record written before they were listed
    has none: the writer then takes its lessors from its flags, which a change must not narrow)."""
    roles = load_roles(path, default_roles(nodes))
    if not roles.replicators:
        roles = dataclasses.replace(roles, replicators=default_roles(nodes).replicators)
    return roles


def _primary_vdl(writer_address: str) -> int:
    status = _compute_status(writer_address, 2.0)
    if status is None:
        raise RuntimeFailure(f"the primary writer at {writer_address} does not answer; a region joins a primary "
                             "that takes writes (`sixfold status`)")
    return status.vdl


def _wait_caught_up(address: str, primary_vdl: int, region: int):
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    last = None
    while True:
        status = _compute_status(address)
        last = status or last
        if status is not None and status.health == "ok" and status.vdl >= primary_vdl:
            return status
        if status is not None and status.health == "needs-resync":
            raise RuntimeFailure(f"region {region}'s replicator cannot ship: the primary no longer holds the log it "
                                 f"needs and seeding failed (see its log); it stays joining: take it out with "
                                 f"`sixfold region remove {region}`")
        if time.monotonic() > deadline:
            raise RuntimeFailure(
                f"region {region}'s replicator did not reach LSN {primary_vdl} within {JOIN_TIMEOUT_S:.0f} s "
                f"(at {last.vdl if last else '?'}, {last.health if last else 'no answer'}); it stays joining: "
                f"take it out with `sixfold region remove {region}`")
        time.sleep(0.2)


def remove_region(cdir: ClusterDir, region: int, progress: Progress) -> dict:
    t0 = time.monotonic()
    with cdir.cli_locked():
        state, spec = _global_cluster(cdir)
        nodes = node_specs(state)
        path = roles_path(cdir.root)
        roles = _roles(path, nodes)
        problem = region_change_problem(roles, spec.region_numbers(), region, adding=False)
        if problem:
            raise UsageProblem(problem)
        names = [n.name for n in in_region(nodes, region)]
        # first: the writer stops needing its lease (so stopping its replicator cannot stall commits)
        save_roles(path, roles.without_region(region))
        progress(f"region {region} leaves the region roles; stopping its {len(names)} nodes")
        new_spec = dataclasses.replace(spec, removed_regions=tuple(sorted({*spec.removed_regions, region})))
        cdir.post_request({"action": "remove-region", "names": names, "spec": new_spec.to_dict()})
        wait_for(cdir, lambda: not set(names) & set(node_entries(cdir)), f"the supervisor to stop region {region}")
        for name in names:   # its copies: the primary holds everything, a later add starts empty
            shutil.rmtree(cdir.node_data(name), ignore_errors=True)
        progress(f"region {region} is gone; its copies are deleted")
    return {"region": region, "removed": names, "duration_s": round(time.monotonic() - t0, 3)}
