"""Where each segment's six copies live: two storage nodes in each of three AZs.

Pure and deterministic: the same node list always gives the same placement. It is
only a PG's starting membership (epoch 0): membership changes that replace a lost
node are recorded on the storage nodes with higher epochs, and recovery uses the
highest one it finds (sixfold/volume/membership.py).
"""

from __future__ import annotations

from dataclasses import dataclass

COPIES = 6
AZ_COUNT = 3
COPIES_PER_AZ = COPIES // AZ_COUNT


@dataclass(frozen=True, slots=True)
class StorageNodeInfo:
    node_id: str
    az: str
    address: str  # host:port
    region: str = "1"


class PlacementError(ValueError):
    """The topology cannot hold six copies over three AZs."""


def check_topology(nodes: list[StorageNodeInfo]) -> dict[str, list[StorageNodeInfo]]:
    by_az: dict[str, list[StorageNodeInfo]] = {}
    for node in nodes:
        by_az.setdefault(node.az, []).append(node)
    if len(by_az) != AZ_COUNT:
        raise PlacementError(
            f"storage nodes span {len(by_az)} AZ(s) ({', '.join(sorted(by_az)) or 'none'}); "
            f"six copies need exactly {AZ_COUNT} AZs"
        )
    for az, members in by_az.items():
        if len(members) < COPIES_PER_AZ:
            raise PlacementError(f"AZ {az} has {len(members)} storage node(s); each AZ needs at least {COPIES_PER_AZ}")
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise PlacementError("storage node ids must be unique")
    return {az: sorted(members, key=lambda n: n.node_id) for az, members in sorted(by_az.items())}


def place_segment(segment: int, nodes: list[StorageNodeInfo]) -> tuple[StorageNodeInfo, ...]:
    """The six members of a segment's PG, AZ by AZ, rotating so that segments spread."""
    by_az = check_topology(nodes)
    members: list[StorageNodeInfo] = []
    for az_nodes in by_az.values():
        n = len(az_nodes)
        first = (segment * COPIES_PER_AZ) % n
        members.extend(az_nodes[(first + k) % n] for k in range(COPIES_PER_AZ))
    assert len({m.node_id for m in members}) == COPIES
    return tuple(members)


def segment_of_page(page: int, pages_per_segment: int) -> int:
    return page // pages_per_segment
