"""The command line of every node, as data: shared by every runtime.

Pure: no I/O. The local supervisor runs these arguments as processes, the
docker runtime as the command of each container; the Kubernetes manifests
carry the same flags (their tuning settings come from the settings table as
environment variables instead, see k8s_manifests.py).
"""

from __future__ import annotations

from sixfold.runtime.topology import (COMPUTE, COORDINATOR, PG_USER, READER, STORAGE, TIER_MAX, WRITER,
                                      ClusterSpec, NodeSpec, custom_endpoint_port_base, raft_address,
                                      router_addresses, storage_nodes_flag)

NODE_MODULES = {STORAGE: "sixfold.nodes.storage", COMPUTE: "sixfold.nodes.compute",
                COORDINATOR: "sixfold.nodes.coordinator"}


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
    coordinators = [s for s in specs if s.kind == COORDINATOR]
    if node.kind == COORDINATOR:
        compute = [s for s in specs if s.kind == COMPUTE]
        instances = ",".join(f"{s.name}:{s.role}:{s.az}:{promotion_tier(s, i)}={s.address}"
                             for i, s in enumerate(compute))
        endpoints = router_addresses(specs)
        if not shared_endpoint_address:
            endpoints = {name: f"{node.host}:{address.rsplit(':', 1)[1]}" for name, address in endpoints.items()}
        return head + [
            "--listen", node.address, "--raft", raft_address(node),
            "--replicas", ",".join(f"{c.address}@{raft_address(c)}" for c in coordinators),
            "--instances", instances, "--writer-endpoint", endpoints["writer"],
            "--reader-endpoint", endpoints["reader"], "--writer-pg-endpoint", endpoints["writer-pg"],
            "--reader-pg-endpoint", endpoints["reader-pg"],
            "--custom-endpoint-port-base", str(custom_endpoint_port_base(specs)),
            "--storage-nodes", storage_nodes_flag(specs),
            "--storage-replace-after-s", str(tuning.get("storage_replace_after_s", 30.0)),
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
    writer = next((s for s in specs if s.role == WRITER), None)
    if node.role == READER and writer is not None:   # (the first writer may have been removed as a
        args += ["--writer-address", writer.address]  # reader: then the catalog says who the writer is)
    return args
