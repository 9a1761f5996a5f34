"""The command line of every node, as data: shared by every runtime.

Pure: no I/O. The local supervisor runs these arguments as processes, the
docker runtime as the command of each container; the Kubernetes manifests
carry the same flags (their tuning settings come from the settings table as
environment variables instead, see k8s_manifests.py).
"""

from __future__ import annotations

from sixfold.runtime.topology import (COMPUTE, COORDINATOR, PG_USER, PRIMARY_REGION, READER, REPLICATOR, STORAGE,
                                      TIER_MAX, WRITER, ClusterSpec, NodeSpec, custom_endpoint_port_base, in_region,
                                      raft_address, router_addresses, storage_nodes_flag)

NODE_MODULES = {STORAGE: "sixfold.nodes.storage", COMPUTE: "sixfold.nodes.compute",
                COORDINATOR: "sixfold.nodes.coordinator", REPLICATOR: "sixfold.globaldb"}

VDL_HINT_INTERVAL_MS = 10   # with secondary regions: storage learns the writer's VDL this soon (globaldb)


def promotion_tier(node: NodeSpec, position: int) -> int:
    """Its own tier if it was given one (`sixfold replica add --tier`); else readers in the order
    they were made (reader-1 first), the writer last."""
    if node.tier >= 0:
        return node.tier
    return min(position, TIER_MAX) if node.role == READER else TIER_MAX


def node_args(node: NodeSpec, specs: list[NodeSpec], spec: ClusterSpec, tuning: dict, data_dir: str,
              shared_endpoint_address: bool = True) -> list[str]:
    """`-m MODULE --flag value ...` for `node` in the cluster `specs` (run it with a Python)."""
    head = ["-m", NODE_MODULES[node.kind]]
    if node.kind == STORAGE:
        return head + [
            "--node-id", node.name, "--region", str(node.region), "--az", str(node.az), "--listen", node.address,
            "--data-dir", data_dir, "--gossip-interval-ms", str(tuning.get("gossip_interval_ms", 100)),
        ]
    all_specs = specs
    specs = in_region(all_specs, node.region)   # a region's nodes only talk among
    coordinators = [s for s in specs if s.kind == COORDINATOR]      # themselves (but replicators)
    if node.kind == REPLICATOR:
        source = in_region(all_specs, 1)
        return head + [
            "--node-id", node.name, "--region", str(node.region), "--az", str(node.az), "--listen", node.address,
            "--data-dir", data_dir, "--source-storage-nodes", storage_nodes_flag(source),
            "--storage-nodes", storage_nodes_flag(specs), "--volume-id", spec.volume_id,
            "--pages-per-segment", str(spec.pages_per_segment),
        ]
    if node.kind == COORDINATOR:
        # a secondary region's catalog has its replicator where the writer would be: its
        # readers follow it, and nothing there is ever promoted (--no-failover)
        compute = [s for s in specs if s.kind in (COMPUTE, REPLICATOR)]
        instances = ",".join(f"{s.name}:{WRITER if s.kind == REPLICATOR else s.role}:{s.az}:"
                             f"{promotion_tier(s, i)}={s.address}" for i, s in enumerate(compute))
        endpoints = router_addresses(specs)
        if not shared_endpoint_address:
            endpoints = {name: f"{node.host}:{address.rsplit(':', 1)[1]}" for name, address in endpoints.items()}
        secondary = ["--no-failover"] if any(s.kind == REPLICATOR for s in specs) else []
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
    if coordinators:
        # a restarted instance asks the catalog for its role (the writer may have moved)
        args += ["--coordinators", ",".join(c.address for c in coordinators)]
    writer = next((s for s in specs if s.role in (WRITER, REPLICATOR)), None)
    if tuning.get("write_forwarding") and node.region != PRIMARY_REGION and node.role == READER:
        primary_coordinators = [s for s in in_region(all_specs, PRIMARY_REGION) if s.kind == COORDINATOR]
        args += ["--write-forwarding", "--primary-coordinators", ",".join(c.address for c in primary_coordinators)]
    if spec.regions > 1 and node.region == 1:   # a reader too: it may be promoted
        args += ["--vdl-hint-interval-ms", str(VDL_HINT_INTERVAL_MS)]
    if node.takes_writes and writer is not None:   # a peer writer (multi-writer, MULTIWRITER.md)
        args[args.index("--role") + 1] = WRITER
        args += ["--multi-writer", "--writer-address", writer.address]
    elif node.role == WRITER and spec.writers > 1:
        args += ["--multi-writer"]   # the primary: runs the adjudicator
    elif node.role == READER and writer is not None:   # (the first writer may have been removed as a
        args += ["--writer-address", writer.address]  # reader: then the catalog says who the writer is)
    return args
