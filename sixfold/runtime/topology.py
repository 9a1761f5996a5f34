"""The shape of a cluster, as data: a `ClusterSpec` in, node specs out.

Pure: no I/O, no processes. Every runtime (local processes today, containers
and Kubernetes later) asks this module which nodes a cluster has and where
they live, so that the same flags give the same cluster everywhere.

Addresses follow DESIGN.md section 7: every node binds its own loopback address
`127.<region>.<az>.<n>`, so the region and AZ of a node can be read from its
address, and partitions can be cut between addresses.

- storage nodes: n = 1..storage_per_az, port `storage_port` (7100)
- compute instances: n = 100 + k, port `compute_port` (7200); the writer is
  k = 0 in AZ 1, reader i (1-based) is k = i, placed round-robin over AZs 2, 3, 1, ...
  so that the first readers survive the loss of the writer's AZ.
- coordinators: one per AZ on `127.<region>.<az>.200`, gRPC on compute_port + 100 (7300),
  raft on compute_port + 101 (7301). Their endpoint router listens on the region's endpoint
  address `127.<region>.0.200`: writer endpoint compute_port + 200 (7400), reader + 201 (7401),
  shared by the three replicas (SO_REUSEPORT). The ports follow compute_port so that
  clusters on other ports (tests, the demo) never collide.
- PostgreSQL wire protocol: every compute instance on its own address, port compute_port + 1000
  (8200); the router's PostgreSQL writer endpoint compute_port + 1200 (8400), reader + 1201 (8401).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from sixfold.volume.placement import AZ_COUNT, COPIES_PER_AZ, StorageNodeInfo

READERS_MAX = 15  # Aurora's limit; promotion tiers are 0..15
WRITERS_MAX = 8   # multi-writer: the primary and up to 7 peer writers (MULTIWRITER.md)
PEER_WRITER_OCTET_BASE = 120  # peer writer k (k >= 2) is 127.<r>.<az>.120+k: above every reader's octet
TIER_MAX = 15
COMPUTE_OCTET_BASE = 100  # compute instances are 127.<r>.<az>.100+k
STORAGE_PER_AZ_MAX = COMPUTE_OCTET_BASE - 1  # storage octets must stay below the compute ones

STORAGE = "storage"
COMPUTE = "compute"
COORDINATOR = "coordinator"
REPLICATOR = "replicator"   # a secondary region's log shipper (sixfold/globaldb/DESIGN.md)
REPLICATOR_OCTET = 210
REPLICATOR_PORT_OFFSET = 150   # from compute_port
REGIONS_MAX = 9                # a bound; addresses allow up to 255
PRIMARY_REGION = 1             # the region that takes writes at `up` (then regions.json says: globaldb/roles.py)
COORDINATOR_OCTET = 200
COORDINATOR_PORT_OFFSET = 100   # from compute_port
RAFT_PORT_OFFSET = 101
WRITER_ENDPOINT_PORT_OFFSET = 200
READER_ENDPOINT_PORT_OFFSET = 201
CUSTOM_ENDPOINT_PORT_OFFSET = 210   # custom endpoints: + 210 .. + 225 (the catalog assigns a slot),
CUSTOM_ENDPOINT_SLOTS = 16           # their PostgreSQL twins + 226 .. + 241
PG_PORT_OFFSET = 1000                 # an instance's PostgreSQL port, from its compute (gRPC) port
PG_WRITER_ENDPOINT_PORT_OFFSET = 1200  # from compute_port
PG_READER_ENDPOINT_PORT_OFFSET = 1201
HIGHEST_PORT_OFFSET = PG_READER_ENDPOINT_PORT_OFFSET
PG_USER = "sixfold"
PG_DATABASE = "sixfold"
WRITER = "writer"
READER = "reader"


class TopologyError(ValueError):
    """The requested cluster cannot be built (a usage error: exit code 2)."""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    regions: int = 1
    azs: int = 3
    storage_per_az: int = 2
    readers: int = 1
    writers: int = 1
    storage_port: int = 7100
    compute_port: int = 7200
    volume_id: str = "vol-1"
    pages_per_segment: int = 256
    # regions taken out by `sixfold region remove` (numbers are never reused: `region add` appends
    # region `regions + 1`), so the cluster's regions are 1..regions without these
    removed_regions: tuple[int, ...] = ()

    # the fields that define which nodes exist and where (ports may differ between starts)
    SHAPE_FIELDS = ("regions", "azs", "storage_per_az", "readers", "writers", "volume_id", "pages_per_segment")

    def problems(self) -> list[str]:
        """Every reason this spec is impossible, each saying what to do instead."""
        found = []
        if not 1 <= self.regions <= REGIONS_MAX:
            found.append(f"--regions {self.regions}: a cluster has 1 to {REGIONS_MAX} regions (region 1 is the "
                         "primary, the others are secondary regions with their own storage and readers)")
        if self.azs != AZ_COUNT:
            found.append(f"--azs {self.azs}: the volume keeps six copies over exactly {AZ_COUNT} AZs "
                         f"(two per AZ, so that losing an AZ leaves a write quorum of 4); use --azs {AZ_COUNT}")
        if self.storage_per_az < COPIES_PER_AZ:
            found.append(f"--storage-per-az {self.storage_per_az}: each AZ holds {COPIES_PER_AZ} of the six "
                         f"copies, so it needs at least {COPIES_PER_AZ} storage nodes")
        elif self.storage_per_az > STORAGE_PER_AZ_MAX:
            found.append(f"--storage-per-az {self.storage_per_az}: at most {STORAGE_PER_AZ_MAX} "
                         f"(addresses 127.<region>.<az>.{COMPUTE_OCTET_BASE}+ belong to compute instances)")
        if not 0 <= self.readers <= READERS_MAX:
            found.append(f"--readers {self.readers}: a cluster has 0 to {READERS_MAX} readers")
        if not 1 <= self.writers <= WRITERS_MAX:
            found.append(f"--writers {self.writers}: a cluster has 1 to {WRITERS_MAX} writers")
        if self.writers > 1 and self.regions > 1:
            found.append("--writers with --regions: several writers with secondary regions are not supported "
                         "(the replicator ships one writer's log); use one or the other")
        for name, port in (("--storage-port", self.storage_port), ("--compute-port", self.compute_port)):
            if not 1 <= port <= 65535:
                found.append(f"{name} {port}: a port is 1..65535")
        if self.compute_port > 65535 - HIGHEST_PORT_OFFSET:
            found.append(f"--compute-port {self.compute_port}: at most {65535 - HIGHEST_PORT_OFFSET} "
                         f"(the coordinators, endpoints and PostgreSQL ports use the ports up to compute port + "
                         f"{HIGHEST_PORT_OFFSET})")
        if self.storage_port - self.compute_port in (PG_PORT_OFFSET, PG_WRITER_ENDPOINT_PORT_OFFSET,
                                                     PG_READER_ENDPOINT_PORT_OFFSET):
            found.append("--storage-port must not be --compute-port + 1000, + 1200 or + 1201 (PostgreSQL ports)")
        custom = range(CUSTOM_ENDPOINT_PORT_OFFSET, CUSTOM_ENDPOINT_PORT_OFFSET + 2 * CUSTOM_ENDPOINT_SLOTS)
        if self.storage_port - self.compute_port in custom:
            found.append(f"--storage-port must not be --compute-port + {custom.start} .. + {custom.stop - 1} "
                         "(custom endpoints)")
        if self.storage_port - self.compute_port in (COORDINATOR_PORT_OFFSET, RAFT_PORT_OFFSET):
            found.append("--storage-port must not be --compute-port + 100 or + 101 (the coordinators' ports)")
        if self.regions > 1 and self.storage_port - self.compute_port == REPLICATOR_PORT_OFFSET:
            found.append(f"--storage-port must not be --compute-port + {REPLICATOR_PORT_OFFSET} (the replicators' port)")
        if self.storage_port == self.compute_port:
            found.append("--storage-port and --compute-port must differ")
        if not self.volume_id or not all(c.isalnum() or c in "-_." for c in self.volume_id):
            found.append(f"--volume-id {self.volume_id!r}: use letters, digits, '-', '_' or '.'")
        if not 1 <= self.pages_per_segment <= 1 << 20:
            found.append(f"--pages-per-segment {self.pages_per_segment}: use 1..{1 << 20}")
        return found

    def region_numbers(self) -> list[int]:
        return [r for r in range(1, self.regions + 1) if r not in self.removed_regions]

    def validate(self) -> "ClusterSpec":
        problems = self.problems()
        if problems:
            raise TopologyError("; ".join(problems))
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClusterSpec":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["removed_regions"] = tuple(values.get("removed_regions", ()))   # (a list in JSON)
        return cls(**values)

    def shape_differences(self, other: "ClusterSpec") -> list[str]:
        """`field: ours -> theirs` for each shape field that differs."""
        return [f"{name}: {getattr(self, name)} -> {getattr(other, name)}"
                for name in self.SHAPE_FIELDS if getattr(self, name) != getattr(other, name)]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    kind: str  # "storage" | "compute" | "coordinator"
    role: str  # "storage" | "writer" | "reader" | "coordinator"
    region: int
    az: int
    host: str
    port: int
    tier: int = -1   # compute: promotion tier 0-15 (-1: by position, readers first, the writer last)
    # multi-writer: a peer writer (writer-2, ...). Role READER: to the control plane it follows the
    # primary like a reader; it also takes writes, committing through the primary (MULTIWRITER.md)
    takes_writes: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pg_address(self) -> str:
        """A compute instance's PostgreSQL wire protocol address."""
        assert self.kind == COMPUTE
        return f"{self.host}:{self.port + PG_PORT_OFFSET}"

    def to_dict(self) -> dict:
        return {**asdict(self), "address": self.address}

    @classmethod
    def from_dict(cls, data: dict) -> "NodeSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def reader_az(reader_no: int, azs: int = AZ_COUNT) -> int:
    """AZ of reader `reader_no` (1-based): 2, 3, 1, 2, 3, 1, ... (the writer is in AZ 1)."""
    assert reader_no >= 1
    return (reader_no % azs) + 1


def storage_name(region: int, az: int, n: int) -> str:
    return f"storage-{region}-{az}-{n}"


def reader_name(region: int, i: int) -> str:
    """`reader-i` in the primary region (the names one-region clusters always had), `reader-R-i` elsewhere."""
    return f"reader-{i}" if region == 1 else f"reader-{region}-{i}"


def nodes_of(spec: ClusterSpec) -> list[NodeSpec]:
    """Every node of the cluster, region by region: storage first (start order), then the writer
    (primary region) or the replicator (secondary regions), readers, coordinators."""
    spec.validate()
    nodes = []
    for region in spec.region_numbers():
        nodes += region_nodes(spec, region)
    names = [n.name for n in nodes]
    hosts = [n.host for n in nodes]
    assert len(set(names)) == len(names) and len(set(hosts)) == len(hosts), "names and addresses are unique"
    return nodes


def region_nodes(spec: ClusterSpec, region: int) -> list[NodeSpec]:
    nodes = [
        NodeSpec(name=storage_name(region, az, n), kind=STORAGE, role=STORAGE, region=region, az=az,
                 host=f"127.{region}.{az}.{n}", port=spec.storage_port)
        for az in range(1, spec.azs + 1)
        for n in range(1, spec.storage_per_az + 1)
    ]
    if region == 1:
        nodes.append(NodeSpec(name="writer-1", kind=COMPUTE, role=WRITER, region=region, az=1,
                              host=f"127.{region}.1.{COMPUTE_OCTET_BASE}", port=spec.compute_port))
        for k in range(2, spec.writers + 1):
            az = (k - 1) % spec.azs + 1   # writer-2 in AZ 2, writer-3 in AZ 3, writer-4 in AZ 1, ...
            nodes.append(NodeSpec(name=f"writer-{k}", kind=COMPUTE, role=READER, region=region, az=az,
                                  host=f"127.{region}.{az}.{PEER_WRITER_OCTET_BASE + k}", port=spec.compute_port,
                                  takes_writes=True))
    if region != 1 or spec.regions > 1:
        # every region of a global cluster has a replicator; it runs while its region is a
        # secondary (the primary's, replicator-1 at first, stands by: sixfold/globaldb/roles.py)
        nodes.append(NodeSpec(name=f"replicator-{region}", kind=REPLICATOR, role=REPLICATOR, region=region, az=1,
                              host=f"127.{region}.1.{REPLICATOR_OCTET}",
                              port=spec.compute_port + REPLICATOR_PORT_OFFSET))
    for i in range(1, spec.readers + 1):
        az = reader_az(i, spec.azs)
        nodes.append(NodeSpec(name=reader_name(region, i), kind=COMPUTE, role=READER, region=region, az=az,
                              host=f"127.{region}.{az}.{COMPUTE_OCTET_BASE + i}", port=spec.compute_port))
    for az in range(1, spec.azs + 1):
        nodes.append(NodeSpec(name=f"coordinator-{region}-{az}", kind=COORDINATOR, role=COORDINATOR, region=region,
                              az=az, host=f"127.{region}.{az}.{COORDINATOR_OCTET}",
                              port=spec.compute_port + COORDINATOR_PORT_OFFSET))
    return nodes


def in_region(nodes: list[NodeSpec], region: int) -> list[NodeSpec]:
    return [n for n in nodes if n.region == region]


def storage_node_infos(nodes: list[NodeSpec]) -> list[StorageNodeInfo]:
    return [StorageNodeInfo(node_id=n.name, az=str(n.az), address=n.address, region=str(n.region))
            for n in nodes if n.kind == STORAGE]


def storage_nodes_flag(nodes: list[NodeSpec]) -> str:
    """The compute node's `--storage-nodes` value: ID@AZ=HOST:PORT,..."""
    return ",".join(f"{n.name}@{n.az}={n.address}" for n in nodes if n.kind == STORAGE)


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    kind: str  # "writer" | "reader" | "custom" | "instance"
    host: str
    port: int
    target: str  # the instance it points at
    pg_port: int = 0   # the PostgreSQL wire protocol on the same host
    dsn: str = ""      # a ready-to-use postgresql:// URL (with the cluster's password, when known)
    type: str = ""             # custom endpoints: "reader" or "any"
    members: tuple[str, ...] = ()   # custom endpoints: the instances it may route to

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pg_address(self) -> str:
        return f"{self.host}:{self.pg_port}" if self.pg_port else ""

    def to_dict(self) -> dict:
        out = {**asdict(self), "address": self.address, "pg_address": self.pg_address}
        if self.kind == "custom":
            out["members"] = list(self.members)
        else:
            del out["type"], out["members"]
        return out


def pg_dsn(host: str, port: int, password: str = "") -> str:
    from urllib.parse import quote

    secret = f":{quote(password, safe='')}" if password else ""
    return f"postgresql://{PG_USER}{secret}@{host}:{port}/{PG_DATABASE}"


def raft_address(node: NodeSpec) -> str:
    assert node.kind == COORDINATOR
    return f"{node.host}:{node.port - COORDINATOR_PORT_OFFSET + RAFT_PORT_OFFSET}"


def endpoint_host(region: int) -> str:
    return f"127.{region}.0.{COORDINATOR_OCTET}"


def router_addresses(nodes: list[NodeSpec]) -> dict[str, str]:
    """The router's writer and reader endpoint addresses ({} without coordinators)."""
    coordinators = [n for n in nodes if n.kind == COORDINATOR]
    if not coordinators:
        return {}
    compute_port = coordinators[0].port - COORDINATOR_PORT_OFFSET
    host = endpoint_host(coordinators[0].region)
    return {"writer": f"{host}:{compute_port + WRITER_ENDPOINT_PORT_OFFSET}",
            "reader": f"{host}:{compute_port + READER_ENDPOINT_PORT_OFFSET}",
            "writer-pg": f"{host}:{compute_port + PG_WRITER_ENDPOINT_PORT_OFFSET}",
            "reader-pg": f"{host}:{compute_port + PG_READER_ENDPOINT_PORT_OFFSET}"}


def custom_endpoint_port_base(nodes: list[NodeSpec]) -> int | None:
    coordinators = [n for n in nodes if n.kind == COORDINATOR]
    if not coordinators:
        return None
    return coordinators[0].port - COORDINATOR_PORT_OFFSET + CUSTOM_ENDPOINT_PORT_OFFSET


def metrics_address(node: NodeSpec) -> str:
    """A replicator's Prometheus endpoint (http://ADDRESS/metrics): the port after its own."""
    return f"{node.host}:{node.port + 1}"


def extra_listen_addresses(nodes: list[NodeSpec]) -> list[tuple[str, str]]:
    """(address, what) the cluster binds besides each node's own address: raft ports, endpoints."""
    out = [(raft_address(n), f"{n.name} raft") for n in nodes if n.kind == COORDINATOR]
    out += [(metrics_address(n), f"{n.name} metrics") for n in nodes if n.kind == REPLICATOR]
    for region in sorted({n.region for n in nodes}):
        out += [(address, f"region {region} {name} endpoint")
                for name, address in router_addresses(in_region(nodes, region)).items()]
    out += [(n.pg_address, f"{n.name} PostgreSQL") for n in nodes if n.kind == COMPUTE]
    return out


def listen_addresses(nodes: list[NodeSpec]) -> list[tuple[str, int]]:
    """(host, port) of every address the cluster binds: the nodes', raft, endpoints, PostgreSQL."""
    out = [(n.host, n.port) for n in nodes]
    for address, _what in extra_listen_addresses(nodes):
        host, port = address.rsplit(":", 1)
        out.append((host, int(port)))
    return out


def endpoints_of(nodes: list[NodeSpec]) -> list[Endpoint]:
    """Writer and reader (cluster) endpoints, then one per instance.

    The writer and reader endpoints are the coordinators' router (target "router":
    it forwards to the current writer, or round-robin over healthy readers).
    """
    compute = [n for n in nodes if n.kind == COMPUTE]
    routed = router_addresses(nodes)
    out = []
    for name, kind in (("writer", WRITER), ("reader", READER)):
        host, port = routed[name].rsplit(":", 1)
        pg_port = int(routed[f"{name}-pg"].rsplit(":", 1)[1])
        out.append(Endpoint(name, kind, host, int(port), "router", pg_port, pg_dsn(host, pg_port)))
    for region in sorted({n.region for n in nodes} - {1}):
        # a secondary region's readers, through its own coordinators' router
        routed = router_addresses(in_region(nodes, region))
        if routed:
            host, port = routed["reader"].rsplit(":", 1)
            pg_port = int(routed["reader-pg"].rsplit(":", 1)[1])
            out.append(Endpoint(f"region-{region}-reader", READER, host, int(port), "router", pg_port,
                                pg_dsn(host, pg_port)))
    out += [Endpoint(n.name, "instance", n.host, n.port, n.name, n.port + PG_PORT_OFFSET,
                     pg_dsn(n.host, n.port + PG_PORT_OFFSET)) for n in compute]
    return out


def select_nodes(nodes: list[NodeSpec], *, names: tuple[str, ...] = (), azs: tuple[int, ...] = (),
                 writer: bool = False, readers: bool = False, storage: bool = False,
                 all_nodes: bool = False, regions: tuple[int, ...] = ()) -> list[NodeSpec]:
    """The nodes a chaos command aims at, in start order; unknown names and AZs are errors."""
    known = {n.name for n in nodes}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise TopologyError(f"no node named {', '.join(unknown)}; the nodes are: {', '.join(sorted(known))}")
    known_azs = sorted({n.az for n in nodes})
    bad_azs = [az for az in azs if az not in known_azs]
    if bad_azs:
        raise TopologyError(f"no AZ {', '.join(map(str, bad_azs))}; the AZs are {', '.join(map(str, known_azs))}")
    chosen = [
        n for n in nodes
        if all_nodes or n.name in names or n.az in azs or n.region in regions or (writer and n.role == WRITER)
        or (readers and n.role == READER) or (storage and n.kind == STORAGE)
    ]
    return chosen
