"""`sixfold coordinator`: one replica of the region's coordinator group.

Three replicas per region (one per AZ) form a pysyncobj raft group holding the
catalog (catalog.py). Every replica serves the Coordinator gRPC service from
its own copy (planned failovers go to the leader) and runs the endpoint router
(router.py); the leader runs the control loop (control.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click
import grpc

from pysyncobj import SyncObjException

from sixfold.client import latency
from sixfold.nodes.coordinator.catalog import CUSTOM_ENDPOINTS_MAX, Catalog
from sixfold.nodes.coordinator.control import RAFT_WRITE_TIMEOUT_S, Controller, FailoverError
from sixfold.nodes.coordinator.router import (PG_SUFFIX, Router, custom_addresses, custom_targets,
                                              reader_targets, writer_target)
from sixfold.nodes.coordinator.healing import REPLACE_AFTER_S_DEFAULT, StorageHealer, parse_storage_nodes
from sixfold.rpc import coordinator_pb2 as pb
from sixfold.rpc import coordinator_pb2_grpc
from sixfold.rpc.health import add_health

log = logging.getLogger("sixfold.coordinator")

TIER_MAX = 15


def parse_instances(spec: str) -> tuple[list[dict], str]:
    """`NAME:ROLE:AZ:TIER=HOST:PORT,...` -> instance dicts and the writer's name."""
    out, writer = [], ""
    for item in filter(None, (p.strip() for p in spec.split(","))):
        try:
            ident, address = item.split("=", 1)
            name, role, az, tier = ident.split(":")
            tier_no = int(tier)
            if role not in ("writer", "reader") or not 0 <= tier_no <= TIER_MAX:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected NAME:writer|reader:AZ:TIER(0-15)=HOST:PORT",
                                     param_hint="--instances") from None
        out.append({"name": name, "role": role, "az": az, "tier": tier_no, "address": address,
                    "health": "unknown", "vdl": 0})
        if role == "writer":
            writer = name
    if sum(1 for i in out if i["role"] == "writer") != 1:
        raise click.BadParameter("exactly one instance must be the writer", param_hint="--instances")
    return out, writer


def parse_replicas(spec: str) -> list[tuple[str, str]]:
    """`GRPC_HOST:PORT@RAFT_HOST:PORT,...` (all three, this one included)."""
    pairs = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        if "@" not in item:
            raise click.BadParameter(f"{item!r}: expected GRPC_HOST:PORT@RAFT_HOST:PORT", param_hint="--replicas")
        grpc_address, raft_address = item.split("@", 1)
        pairs.append((grpc_address, raft_address))
    return pairs


def endpoint_list(snap: dict, endpoints: dict[str, str], custom_port_base: int | None = None) -> list[pb.Endpoint]:
    out = []
    writer = writer_target(snap)
    by_address = {i["address"]: n for n, i in snap["instances"].items()}
    if "writer" in endpoints:
        out.append(pb.Endpoint(name="writer", kind="writer", address=endpoints["writer"],
                               targets=[snap["writer"]] if writer else []))
    if "reader" in endpoints:
        readers = [by_address[a] for a in reader_targets(snap)] or ([snap["writer"]] if writer else [])
        out.append(pb.Endpoint(name="reader", kind="reader", address=endpoints["reader"], targets=readers))
    host = next(iter(endpoints.values())).rsplit(":", 1)[0] if endpoints else ""
    addresses = custom_addresses(snap, host, custom_port_base)
    for name, custom in sorted(snap.get("custom", {}).items()):
        if name not in addresses:
            continue
        out.append(pb.Endpoint(name=name, kind="custom", address=addresses[name], type=custom["type"],
                               members=custom["members"], pg_address=addresses[name + PG_SUFFIX],
                               targets=[by_address[a] for a in custom_targets(snap, name)]))
    for name, inst in sorted(snap["instances"].items()):
        out.append(pb.Endpoint(name=name, kind="instance", address=inst["address"], targets=[name]))
    return out


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, catalog: Catalog, controller: Controller, raft_address: str,
                 grpc_of_raft: dict[str, str], endpoints: dict[str, str],
                 custom_port_base: int | None = None) -> None:
        self.catalog = catalog
        self.controller = controller
        self.raft_address = raft_address
        self.grpc_of_raft = grpc_of_raft
        self.endpoints = endpoints
        self.custom_port_base = custom_port_base

    def _endpoints(self, snap: dict) -> list[pb.Endpoint]:
        return endpoint_list(snap, self.endpoints, self.custom_port_base)

    async def _replicate(self, context, change, *args):
        """A catalog change through the raft leader (pysyncobj forwards it from a follower)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, lambda: change(*args, sync=True, timeout=RAFT_WRITE_TIMEOUT_S))
        except SyncObjException as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"the coordinators could not agree on the change ({exc}); retry when they have a leader")

    async def CreateEndpoint(self, request, context):
        if self.custom_port_base is None or not self.endpoints:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "custom endpoints are off: start the coordinators with --custom-endpoint-port-base")
        problem = await self._replicate(context, self.catalog.create_endpoint, request.name, request.type,
                                        list(request.members))
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return next(e for e in self._endpoints(self.catalog.snapshot()) if e.name == request.name)

    async def AddInstance(self, request, context):
        i = request.instance
        if not i.name or not i.address or not 0 <= i.promotion_tier <= TIER_MAX:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"an instance needs a name, an address and a promotion tier 0-{TIER_MAX}")
        problem = await self._replicate(context, self.catalog.add_instance,
                                        {"name": i.name, "az": i.az, "tier": i.promotion_tier, "address": i.address})
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        inst = self.catalog.snapshot()["instances"][i.name]
        return pb.Instance(name=i.name, role=inst["role"], az=str(inst["az"]), promotion_tier=inst["tier"],
                           address=inst["address"], health=inst["health"])

    async def RemoveInstance(self, request, context):
        problem = await self._replicate(context, self.catalog.remove_instance, request.name)
        if problem:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)
        return pb.RemoveInstanceResponse()

    async def DeleteEndpoint(self, request, context):
        if not await self._replicate(context, self.catalog.delete_endpoint, request.name):
            known = sorted(self.catalog.snapshot()["custom"])
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no custom endpoint named {request.name!r}; "
                                f"the custom endpoints are: {', '.join(known) or 'none'}")
        return pb.DeleteEndpointResponse()

    async def GetCatalog(self, request, context):
        snap = self.catalog.snapshot()
        f = snap["failover"]
        return pb.CatalogResponse(
            replica=self.raft_address, is_leader=self.catalog.is_leader(), leader=self.catalog.leader_address(),
            writer=snap["writer"], epoch=snap["epoch"],
            instances=[pb.Instance(name=n, role=i["role"], az=str(i["az"]), promotion_tier=i.get("tier", 1),
                                   address=i["address"], health=i["health"], vdl=i.get("vdl", 0))
                       for n, i in sorted(snap["instances"].items())],
            endpoints=self._endpoints(snap),
            failover=pb.FailoverRecord(**f) if f else None, failovers=snap["failovers"],
            storage=[pb.StorageNode(name=n, az=str(s["az"]), address=s["address"], health=s["health"],
                                    down_s=max(0.0, time.time() - s["down_since_unix"]) if s.get("down_since_unix")
                                    else 0.0, detail=s.get("detail", ""))
                     for n, s in sorted(snap["storage"].items())],
            regions_generation=snap["regions"].get("generation", 0), region=self.controller.region,
            primary_region=snap["regions"].get("primary", 0), primary_writer=snap["regions"].get("writer", ""),
            primary_writer_endpoint=snap["regions"].get("writer_endpoint", ""))

    async def Failover(self, request, context):
        if not self.catalog.is_leader():
            leader = self.catalog.leader_address()
            target = self.grpc_of_raft.get(leader)
            if not target:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no coordinator leader right now; retry")
            async with latency.aio_channel(target) as channel:
                return await coordinator_pb2_grpc.CoordinatorStub(channel).Failover(request, timeout=120)
        loop = asyncio.get_running_loop()
        try:
            record = await loop.run_in_executor(None, self.controller.planned_failover, request.target,
                                                request.min_epoch)
        except FailoverError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.FailoverResponse(failover=pb.FailoverRecord(**record) if record else None)


@click.command("coordinator")
@click.option("--listen", envvar="SIXFOLD_LISTEN", required=True, help="HOST:PORT of this replica's gRPC service.")
@click.option("--raft", "raft_address", envvar="SIXFOLD_RAFT", required=True,
              help="HOST:PORT of this replica's raft (pysyncobj) port.")
@click.option("--replicas", envvar="SIXFOLD_REPLICAS", required=True,
              help="Every replica of the group, this one too: GRPC_HOST:PORT@RAFT_HOST:PORT, comma-separated.")
@click.option("--instances", envvar="SIXFOLD_INSTANCES", required=True,
              help="The compute instances: NAME:writer|reader:AZ:TIER=HOST:PORT, comma-separated "
                   "(loaded into the catalog once, by the first leader).")
@click.option("--writer-endpoint", envvar="SIXFOLD_WRITER_ENDPOINT", default="",
              help="HOST:PORT of the writer endpoint (shared by the replicas with SO_REUSEPORT).")
@click.option("--reader-endpoint", envvar="SIXFOLD_READER_ENDPOINT", default="",
              help="HOST:PORT of the reader endpoint.")
@click.option("--custom-endpoint-port-base", envvar="SIXFOLD_CUSTOM_ENDPOINT_PORT_BASE",
              type=click.IntRange(1, 65535 - 2 * CUSTOM_ENDPOINTS_MAX), default=None,
              help=f"Custom endpoints listen on the endpoint host at this port and the next "
                   f"{CUSTOM_ENDPOINTS_MAX - 1}, their PostgreSQL twins (NAME-pg) on the {CUSTOM_ENDPOINTS_MAX} "
                   f"after those (off when not given).")
@click.option("--writer-pg-endpoint", envvar="SIXFOLD_WRITER_PG_ENDPOINT", default="",
              help="HOST:PORT of the writer endpoint for the PostgreSQL protocol (to the instances' PostgreSQL ports).")
@click.option("--reader-pg-endpoint", envvar="SIXFOLD_READER_PG_ENDPOINT", default="",
              help="HOST:PORT of the reader endpoint for the PostgreSQL protocol.")
@click.option("--storage-nodes", envvar="SIXFOLD_STORAGE_NODES", default="",
              help="The volume's storage nodes, ID@AZ=HOST:PORT, comma-separated: the leader health-checks "
                   "them and has a lost one replaced in every PG (none: no storage self-healing).")
@click.option("--storage-replace-after-s", envvar="SIXFOLD_STORAGE_REPLACE_AFTER_S", type=click.FloatRange(0.5),
              default=REPLACE_AFTER_S_DEFAULT, show_default=True,
              help="How long a storage node may stay unreachable before its PGs get a replacement member.")
@click.option("--no-failover", is_flag=True, envvar="SIXFOLD_NO_FAILOVER",
              help="A secondary region's coordinators: the 'writer' is the region's replicator, and no reader is "
                   "ever promoted here (a region changes roles only by `sixfold region switchover|failover`).")
@click.option("--region", envvar="SIXFOLD_REGION", type=click.IntRange(1), default=1, show_default=True,
              help="This coordinator's region (with --regions-file).")
@click.option("--regions-file", envvar="SIXFOLD_REGIONS_FILE", default="",
              help="The cluster's region-roles file (regions.json): read on every tick, it says which region "
                   "is the primary; only the steady primary's coordinators ever promote (sixfold/globaldb).")
@click.option("--replicator", envvar="SIXFOLD_REPLICATOR", default="",
              help="NAME@AZ=HOST:PORT of this region's replicator: the catalog's writer while the region is a "
                   "secondary.")
def coordinator(listen, raft_address, replicas, instances, writer_endpoint, reader_endpoint,
                custom_endpoint_port_base, writer_pg_endpoint, reader_pg_endpoint, storage_nodes,
                storage_replace_after_s, no_failover, region, regions_file, replicator) -> None:
    """Run one region coordinator replica: catalog, health checks, failover, endpoint router."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s.%(msecs)03d %(levelname)s coordinator {listen} %(name)s: %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")
    seed, writer = parse_instances(instances)
    try:
        storage = parse_storage_nodes(storage_nodes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--storage-nodes") from None
    pairs = parse_replicas(replicas)
    if raft_address not in [r for _, r in pairs]:
        raise click.BadParameter("--replicas must include this replica's --raft address", param_hint="--replicas")
    catalog = Catalog(raft_address, [r for _, r in pairs if r != raft_address])
    controller = Controller(catalog, seed, writer)
    controller.failover_enabled = not no_failover
    controller.region = region
    if regions_file:
        from sixfold.globaldb.roles import RegionRoles, RolesReader

        # (the supervisor writes the file before it starts any node; the default is never applied)
        controller.roles = RolesReader(Path(regions_file), RegionRoles(primary=1, writer="", generation=0))
    if replicator:
        try:
            name, rest = replicator.split("@", 1)
            az, address = rest.split("=", 1)
        except ValueError:
            raise click.BadParameter("expected NAME@AZ=HOST:PORT", param_hint="--replicator") from None
        controller.replicator = {"name": name, "az": az, "tier": TIER_MAX, "address": address}
    endpoints = {k: v for k, v in (("writer", writer_endpoint), ("reader", reader_endpoint)) if v}
    pg_endpoints = {k: v for k, v in (("writer-pg", writer_pg_endpoint), ("reader-pg", reader_pg_endpoint)) if v}
    service = CoordinatorService(catalog, controller, raft_address, {r: g for g, r in pairs}, endpoints,
                                 custom_endpoint_port_base)
    router = Router(catalog.snapshot, {**endpoints, **pg_endpoints}, in_contact=lambda: bool(catalog.leader_address()),
                    custom_port_base=custom_endpoint_port_base)
    stop = threading.Event()
    failure: list[str] = []
    ready = threading.Event()

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(service, server)
        add_health(server)
        try:
            server.add_insecure_port(listen)
            await router.start()
        except (RuntimeError, OSError) as exc:
            failure.append(f"cannot listen: {exc} (is the port taken?)")
            ready.set()
            return
        await server.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await server.stop(grace=1)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="coordinator-loop", daemon=True)
    thread.start()
    serving = asyncio.run_coroutine_threadsafe(serve(), loop)
    ready.wait(30)
    if failure:
        catalog.destroy()
        raise click.ClickException(failure[0])
    controller.start()
    healer = StorageHealer(catalog, storage, storage_replace_after_s, controller.pool)
    if controller.roles is not None:
        # a global cluster: heal while the region is the steady primary (a secondary region's
        # storage is written by its replicator, which replaces no node)
        healer.enabled = lambda: controller.failover_enabled
        healer.start(controller.stop)
    elif not no_failover:
        healer.start(controller.stop)
    log.info("coordinator serving on %s (raft %s; endpoints %s)", listen, raft_address, endpoints or "none")
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        if serving.done():
            break
    controller.stop.set()
    try:
        serving.result(timeout=5)
    except Exception:
        log.exception("server stopped with an error")
    catalog.destroy()
    log.info("stopped")
