"""The command line of every node, as data: shared by every runtime.

Pure: no I/O. The local supervisor runs these arguments as processes, the
docker runtime as the command of each container; the Kubernetes manifests
carry the same flags (their tuning settings come from the settings table as
environment variables instead, see k8s_manifests.py).
"""

from __future__ import annotations

from sixfold.globaldb.roles import RegionRoles, compute_plan
from sixfold.runtime.topology import (COMPUTE, COORDINATOR, PG_USER, READER, REPLICATOR, STORAGE, TIER_MAX, WRITER,
                                      ClusterSpec, NodeSpec, custom_endpoint_port_base, in_region, raft_address,
                                      metrics_address, router_addresses, storage_nodes_flag)

NODE_MODULES = {STORAGE: "sixfold.nodes.storage", COMPUTE: "sixfold.nodes.compute",
                COORDINATOR: "sixfold.nodes.coordinator", REPLICATOR: "sixfold.globaldb"}

VDL_HINT_INTERVAL_MS = 10   # with secondary regions: storage learns the writer's VDL this soon (globaldb)


def default_roles(specs: list[NodeSpec]) -> RegionRoles:
    """The region roles of a cluster no switchover or failover has touched: region 1 and writer-1."""
    writer = next((s for s in specs if s.role == WRITER and s.region == 1), None)
    return RegionRoles(primary=1, writer=writer.name if writer else "",
                       writer_address=writer.address if writer else "",
                       writer_endpoint=router_addresses(in_region(specs, 1)).get("writer", ""),
                       replicators={s.region: s.address for s in specs if s.kind == REPLICATOR})


def promotion_tier(node: NodeSpec, position: int) -> int:
    """Its own tier if it was given one (`sixfold replica add --tier`); else readers in the order
    they were made (reader-1 first), the writer last."""
    if node.tier >= 0:
        return node.tier
    return min(position, TIER_MAX) if node.role == READER else TIER_MAX


def node_args(node: NodeSpec, specs: list[NodeSpec], spec: ClusterSpec, tuning: dict, data_dir: str,
              shared_endpoint_address: bool = True, roles: RegionRoles | None = None,
              roles_file: str = "") -> list[str]:
    """`-m MODULE --flag value ...` for `node` in the cluster `specs` (run it with a Python).

    With several regions the flags follow the region roles (`roles`, read from `roles_file` by the
    supervisor when it starts the node): which region the replicators ship from, which instance is
    the writer, which compute nodes may ask their catalog for a role (sixfold/globaldb/roles.py)."""
    roles = roles or default_roles(specs)
    head = ["-m", NODE_MODULES[node.kind]]
    if node.kind == STORAGE:
        return head + [
            "--node-id", node.name, "--region", str(node.region), "--az", str(node.az), "--listen", node.address,
            "--data-dir", data_dir, "--gossip-interval-ms", str(tuning.get("gossip_interval_ms", 100)),
            "--shipping-retain-s", str(tuning.get("shipping_retain_s", 600.0)),
        ]
    all_specs = specs
    specs = in_region(all_specs, node.region)   # a region's nodes only talk among
    coordinators = [s for s in specs if s.kind == COORDINATOR]      # themselves (but replicators)
    if node.kind == REPLICATOR:
        source = in_region(all_specs, roles.primary)
        return head + [
            "--node-id", node.name, "--region", str(node.region), "--az", str(node.az), "--listen", node.address,
            "--data-dir", data_dir, "--source-storage-nodes", storage_nodes_flag(source),
            "--storage-nodes", storage_nodes_flag(specs), "--volume-id", spec.volume_id,
            "--pages-per-segment", str(spec.pages_per_segment), "--metrics-listen", metrics_address(node),
        ]
    if node.kind == COORDINATOR:
        # a secondary region's catalog has its replicator where the writer would be: its
        # readers follow it, and nothing there is ever promoted (--no-failover)
        secondary_region = spec.regions > 1 and node.region != roles.primary
        compute = [s for s in specs if s.kind == COMPUTE or (s.kind == REPLICATOR and secondary_region)]
        instances = ",".join(f"{s.name}:{_catalog_role(s, roles, spec)}:{s.az}:"
                             f"{promotion_tier(s, i)}={s.address}" for i, s in enumerate(compute))
        endpoints = router_addresses(specs)
        if not shared_endpoint_address:
            endpoints = {name: f"{node.host}:{address.rsplit(':', 1)[1]}" for name, address in endpoints.items()}
        secondary = ["--no-failover"] if secondary_region else []
        replicator = next((s for s in specs if s.kind == REPLICATOR), None)
        if spec.regions > 1 and roles_file and replicator is not None:
            secondary += ["--region", str(node.region), "--regions-file", roles_file,
                          "--replicator", f"{replicator.name}@{replicator.az}={replicator.address}"]
        return head + [
            "--listen", node.address, "--raft", raft_address(node),
            "--replicas", ",".join(f"{c.address}@{raft_address(c)}" for c in coordinators),
            "--instances", instances, "--writer-endpoint", endpoints["writer"],
            "--reader-endpoint", endpoints["reader"], "--writer-pg-endpoint", endpoints["writer-pg"],
            "--reader-pg-endpoint", endpoints["reader-pg"],
            "--custom-endpoint-port-base", str(custom_endpoint_port_base(specs)),
            "--storage-nodes", storage_nodes_flag(specs),
            "--storage-replace-after-s", str(tuning.get("storage_replace_after_s", 30.0)), *secondary,
        ]
    args = head + [
        "--node-id", node.name, "--role", node.role, "--region", str(node.region), "--az", str(node.az),
        "--listen", node.address, "--storage-nodes", storage_nodes_flag(specs), "--volume-id", spec.volume_id,
        "--pages-per-segment", str(spec.pages_per_segment),
        "--commit-timeout-s", str(tuning.get("commit_timeout_s", 10.0)),
        "--pg-listen", node.pg_address, "--pg-user", PG_USER,
    ]
    if spec.regions > 1:
        role, extra = _global_compute_args(node, all_specs, roles, tuning, coordinators, roles_file)
        args[args.index("--role") + 1] = role
        return args + extra
    if coordinators:
        # a restarted instance asks the catalog for its role (the writer may have moved)
        args += ["--coordinators", ",".join(c.address for c in coordinators)]
    writer = next((s for s in specs if s.role in (WRITER, REPLICATOR)), None)
    if node.takes_writes and writer is not None:   # a peer writer (multi-writer, MULTIWRITER.md)
        args[args.index("--role") + 1] = WRITER
        args += ["--multi-writer", "--writer-address", writer.address]
    elif node.role == WRITER and spec.writers > 1:
        args += ["--multi-writer"]   # the primary: runs the adjudicator
    elif node.role == READER and writer is not None:   # (the first writer may have been removed as a
        args += ["--writer-address", writer.address]  # reader: then the catalog says who the writer is)
    return args


def _catalog_role(node: NodeSpec, roles: RegionRoles, spec: ClusterSpec) -> str:
    """A compute instance's (or a secondary region's replicator's) role in its region's catalog seed."""
    if node.kind == REPLICATOR:
        return WRITER    # a secondary region's readers follow it; nothing there is promoted
    if spec.regions > 1:
        return WRITER if node.region == roles.primary and node.name == roles.writer else READER
    return node.role


def _global_compute_args(node: NodeSpec, all_specs: list[NodeSpec], roles: RegionRoles, tuning: dict,
                         coordinators: list[NodeSpec], roles_file: str) -> tuple[str, list[str]]:
    """A compute instance of a cluster with secondary regions: its role follows the region roles, it
    tells storage its VDL often (any instance may become the primary writer), and as a writer it
    acknowledges commits only under a lease from every other region's replicator."""
    replicator = next((s for s in all_specs if s.kind == REPLICATOR and s.region == node.region), None)
    role, follow, may_ask = compute_plan(roles, node.name, node.region, replicator.address if replicator else "")
    args = ["--vdl-hint-interval-ms", str(VDL_HINT_INTERVAL_MS)]
    if may_ask and coordinators:
        args += ["--coordinators", ",".join(c.address for c in coordinators)]
    if follow:
        args += ["--writer-address", follow]
    if tuning.get("write_forwarding") and node.region != roles.primary and role == READER:
        # the primary region's coordinators, then this region's (they name the primary's writer
        # endpoint after a region switch): forwarding.primary_writer_address
        primary_coordinators = [s for s in in_region(all_specs, roles.primary) if s.kind == COORDINATOR]
        args += ["--write-forwarding", "--primary-coordinators",
                 ",".join(c.address for c in [*primary_coordinators, *coordinators])]
    lessors = [f"{s.region}={s.address}" for s in all_specs if s.kind == REPLICATOR and s.region != node.region]
    if lessors:
        args += ["--lease-from", ",".join(lessors), "--lease-s", str(tuning.get("lease_s", 2.0))]
        if roles_file:
            args += ["--regions-file", roles_file]
    return role, args
