"""`sixfold compute-node`: SQLite on the shared volume, as writer or reader."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from pathlib import Path

import click
import grpc

from sixfold.client import latency
from sixfold.client.quorum import ClientSettings
from sixfold.nodes.compute.engine import Engine
from sixfold.nodes.compute.forwarding import Forwarder
from sixfold.nodes.compute.multiwriter import PeerBackend, PeerWriterVolume, PrimaryBackend
from sixfold.nodes.compute.pgwire import functions as pg_functions
from sixfold.nodes.compute.pgwire.protocol import Config as PgConfig
from sixfold.nodes.compute.pgwire.scram import ScramVerifier
from sixfold.nodes.compute.pgwire.server import PgServer, self_signed_context
from sixfold.nodes.compute.server import IDLE_IN_TRANSACTION_TIMEOUT_S, ComputeService, VolumeConfig, start_writer_hub
from sixfold.rpc import coordinator_pb2 as copb
from sixfold.rpc import coordinator_pb2_grpc
from sixfold.nodes.compute.volume import ReaderVolume, WriterVolume
from sixfold.rpc import compute_pb2_grpc
from sixfold.rpc.health import add_health
from sixfold.volume.placement import PlacementError, StorageNodeInfo, check_topology

log = logging.getLogger("sixfold.compute")


def parse_storage_nodes(spec: str) -> list[StorageNodeInfo]:
    """`ID@AZ=HOST:PORT,...` -> node infos (the format `sixfold up` passes)."""
    nodes = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            ident, address = item.split("=", 1)
            node_id, az = ident.split("@", 1)
            host, port = address.rsplit(":", 1)
            int(port)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected ID@AZ=HOST:PORT", param_hint="--storage-nodes") from None
        nodes.append(StorageNodeInfo(node_id=node_id, az=az, address=address))
    try:
        check_topology(nodes)
    except PlacementError as exc:
        raise click.BadParameter(str(exc), param_hint="--storage-nodes") from None
    return nodes


class _Placeholder:
    """Stands in for the engine while a reader subscribes (only `.volume` is used)."""

    def __init__(self, volume) -> None:
        self.volume = volume
        self.fenced = None


def ask_catalog(spec: str, timeout_s: float = 1.0):
    """The catalog of the first coordinator in `spec` (HOST:PORT,...) that answers; None if none does."""
    for address in filter(None, (a.strip() for a in spec.split(","))):
        with latency.sync_channel(address) as channel:
            try:
                return coordinator_pb2_grpc.CoordinatorStub(channel).GetCatalog(copb.CatalogRequest(),
                                                                                 timeout=timeout_s)
            except grpc.RpcError:
                continue
    return None


def writer_of(catalog) -> tuple[str, str] | None:
    """(writer name, writer address) in a region's catalog; a writer being promoted counts."""
    writer_name = catalog.writer
    if catalog.HasField("failover") and catalog.failover.state == "promoting":
        writer_name = catalog.failover.to_instance   # being promoted: it is the writer to follow
    if not writer_name:
        return None
    writer = next((i for i in catalog.instances if i.name == writer_name), None)
    return (writer_name, writer.address if writer else "")


def ask_coordinators(spec: str, timeout_s: float = 1.0) -> tuple[str, str] | None:
    """(writer name, writer address) from the first coordinator that answers; None if none does."""
    catalog = ask_catalog(spec, timeout_s)
    return writer_of(catalog) if catalog is not None else None


@click.command("compute-node")
@click.option("--node-id", envvar="SIXFOLD_NODE_ID", required=True, help="Unique name of this instance.")
@click.option("--role", envvar="SIXFOLD_ROLE", type=click.Choice(["writer", "reader"]), required=True,
              help="writer: runs recovery and takes writes; reader: follows the writer's redo stream.")
@click.option("--region", envvar="SIXFOLD_REGION", default="1", show_default=True)
@click.option("--az", envvar="SIXFOLD_AZ", required=True, help="Availability zone of this instance.")
@click.option("--listen", envvar="SIXFOLD_LISTEN", required=True, help="HOST:PORT for the gRPC services.")
@click.option("--storage-nodes", envvar="SIXFOLD_STORAGE_NODES", required=True,
              help="The volume's storage nodes: ID@AZ=HOST:PORT, comma-separated (2+ per AZ, 3 AZs).")
@click.option("--writer-address", envvar="SIXFOLD_WRITER_ADDRESS", default="",
              help="Reader only: HOST:PORT of the writer's compute node (its redo stream).")
@click.option("--volume-id", envvar="SIXFOLD_VOLUME_ID", default="vol-1", show_default=True)
@click.option("--pages-per-segment", envvar="SIXFOLD_PAGES_PER_SEGMENT", type=click.IntRange(1, 1 << 20),
              default=256, show_default=True, help="Pages per segment (one PG per segment).")
@click.option("--cache-pages", envvar="SIXFOLD_CACHE_PAGES", type=click.IntRange(16), default=20_000,
              show_default=True, help="Pages the node caches (several versions each).")
@click.option("--coordinators", envvar="SIXFOLD_COORDINATORS", default="",
              help="HOST:PORT,... of the region's coordinators: on start, the catalog's writer decides this "
                   "instance's role (a former writer comes back as a reader).")
@click.option("--commit-timeout-s", envvar="SIXFOLD_COMMIT_TIMEOUT_S", type=click.FloatRange(0.1),
              default=10.0, show_default=True, help="How long a commit waits for a write quorum.")
@click.option("--idle-in-transaction-timeout-s", envvar="SIXFOLD_IDLE_IN_TRANSACTION_TIMEOUT_S",
              type=click.FloatRange(0.5), default=IDLE_IN_TRANSACTION_TIMEOUT_S, show_default=True,
              help="A session idle this long inside a transaction is rolled back and closed (it may hold the "
                   "write lock; its client may be gone).")
@click.option("--fault-promote-delay-s", envvar="SIXFOLD_FAULT_PROMOTE_DELAY_S", type=click.FloatRange(0),
              default=0.0, show_default=True,
              help="Fault injection: a promotion waits this long before its recovery (widens the window "
                   "in which a coordinator can die in the middle of a failover).")
@click.option("--multi-writer", envvar="SIXFOLD_MULTI_WRITER", is_flag=True, default=False,
              help="Writer only: one of several writers on the volume (sixfold/nodes/compute/MULTIWRITER.md). "
                   "Without --writer-address it is the primary (runs recovery and the adjudicator); with "
                   "it, a peer writer that follows the primary's redo stream and commits through it.")
@click.option("--vdl-hint-interval-ms", envvar="SIXFOLD_VDL_HINT_INTERVAL_MS", type=click.IntRange(0, 10_000),
              default=0, show_default=True,
              help="With secondary regions: tell storage a new VDL this long after the writer's last batch even "
                   "when there is nothing else to send, so that the last commit before a quiet spell is shipped "
                   "too (0: only with the next batch).")
@click.option("--write-forwarding", envvar="SIXFOLD_WRITE_FORWARDING", is_flag=True, default=False,
              help="Reader in a secondary region: a session that sets sixfold.replica_read_consistency may send "
                   "writes, which run on the primary writer (sixfold/nodes/compute/FORWARDING.md).")
@click.option("--primary-coordinators", envvar="SIXFOLD_PRIMARY_COORDINATORS", default="",
              help="With --write-forwarding: HOST:PORT,... of the primary region's coordinators (they name its "
                   "writer).")
@click.option("--pg-listen", envvar="SIXFOLD_PG_LISTEN", default="",
              help="HOST:PORT for the PostgreSQL wire protocol (off when empty; `sixfold up` uses the "
                   "instance's address and compute port + 1000).")
@click.option("--pg-auth", envvar="SIXFOLD_PG_AUTH", type=click.Choice(["scram", "trust"]), default="scram",
              show_default=True, help="PostgreSQL authentication: SCRAM-SHA-256 with --pg-password, or trust "
                                      "(no password; only for tests and local experiments).")
@click.option("--pg-user", envvar="SIXFOLD_PG_USER", default="sixfold", show_default=True,
              help="The PostgreSQL user name clients log in as.")
@click.option("--pg-password", envvar="SIXFOLD_PG_PASSWORD", default="", show_envvar=True,
              help="The PostgreSQL user's password (SCRAM); prefer the environment variable.")
@click.option("--pg-tls/--no-pg-tls", envvar="SIXFOLD_PG_TLS", default=True, show_default=True,
              help="Accept TLS (SSLRequest) with a self-signed certificate made at start; without it "
                   "SSLRequest is refused and clients fall back to plain TCP or fail (sslmode=require).")
@click.option("--lease-from", envvar="SIXFOLD_LEASE_FROM", default="",
              help="With secondary regions: REGION=HOST:PORT,... of the other regions' replicators; as the writer "
                   "this instance acknowledges a commit only under a lease from each (sixfold/globaldb/lease.py).")
@click.option("--regions-file", envvar="SIXFOLD_REGIONS_FILE", default="",
              help="The cluster's region-roles file: a region that needs a resync (it cannot be promoted) owes "
                   "no lease.")
@click.option("--lease-s", envvar="SIXFOLD_LEASE_S", type=click.FloatRange(0.2), default=2.0, show_default=True,
              help="How long a lease from a replicator lasts (from when it was asked for).")
def compute_node(node_id, role, region, az, listen, storage_nodes, writer_address, volume_id,
                 pages_per_segment, cache_pages, coordinators, commit_timeout_s, idle_in_transaction_timeout_s,
                 fault_promote_delay_s, multi_writer, vdl_hint_interval_ms, write_forwarding, primary_coordinators,
                 pg_listen, pg_auth, pg_user, pg_password, pg_tls, lease_from, lease_s, regions_file) -> None:
    """Run a compute node: SQLite on the shared Sixfold volume."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {node_id} %(name)s: %(message)s")
    nodes = parse_storage_nodes(storage_nodes)
    if pg_listen and pg_auth == "scram" and not pg_password:
        raise click.BadParameter("SCRAM needs a password: set SIXFOLD_PG_PASSWORD (or --pg-auth trust)",
                                 param_hint="--pg-password")
    settings = ClientSettings(volume_id=volume_id, pages_per_segment=pages_per_segment,
                              commit_timeout_s=commit_timeout_s, local_az=az,
                              vdl_hint_interval_s=vdl_hint_interval_ms / 1000)
    lease = None
    if lease_from:
        from sixfold.globaldb.lease import PrimaryLease

        # (the service is made below: the lease asks only while this instance is the writer)
        def writer_epoch() -> int:
            engine = service.engine
            return engine.volume.client.epoch if engine is not None else 0

        def is_writer() -> bool:
            return service.role == "writer" and service.engine is not None and not service.fenced_reason()

        def waived() -> set[int]:
            return lease_waived(roles.get()) if roles is not None else set()

        roles = None
        if regions_file:
            from sixfold.globaldb.roles import RegionRoles, RolesReader, lease_waived
            from sixfold.globaldb.roles import lessors as roles_lessors

            roles = RolesReader(Path(regions_file), RegionRoles())
        try:
            flag_lessors = {int(r): a for r, a in (item.split("=", 1) for item in lease_from.split(",") if item)}
        except ValueError:
            raise click.BadParameter("expected REGION=HOST:PORT,...", param_hint="--lease-from") from None

        def lessors() -> dict[int, str]:
            """The roles' regions when they list them (`region add|remove` change them), else the flag's."""
            current = roles.get() if roles is not None else None
            return roles_lessors(current, int(region)) if current is not None and current.replicators else flag_lessors

        lease = PrimaryLease(lessors, lease_s, writer_epoch, is_writer, waived)
        settings.commit_gate = lease
    if coordinators:
        # a restarted instance asks the catalog what it is now: after a failover the old
        # writer must come back as a reader (opening the volume as writer would fence the new one)
        current = ask_coordinators(coordinators)
        if current is not None and current[0]:
            writer_name, current_address = current
            if multi_writer:
                # stays a writer: the primary if the catalog says so, else a peer of the catalog's writer
                writer_address = "" if writer_name == node_id else current_address
            else:
                new_role = "writer" if writer_name == node_id else "reader"
                if (new_role, current_address) != (role, writer_address):
                    log.warning("the coordinators say %s is the writer: starting as %s", writer_name, new_role)
                role, writer_address = new_role, ("" if new_role == "writer" else current_address)
    if multi_writer and role != "writer":
        raise click.BadParameter("only a writer takes --multi-writer", param_hint="--multi-writer")
    peer_writer = multi_writer and bool(writer_address)
    if peer_writer:
        role = "reader"   # to the control plane it follows the primary like a reader (and takes writes)
    if role == "reader" and not writer_address:
        raise click.BadParameter("a reader needs the writer's address", param_hint="--writer-address")
    if write_forwarding and not primary_coordinators:
        raise click.BadParameter("write forwarding needs the primary region's coordinators",
                                 param_hint="--primary-coordinators")
    stop = threading.Event()
    hub = None
    if role == "writer":
        try:
            volume = WriterVolume.open(nodes, node_id, settings, cache_pages)
        except Exception as exc:
            raise click.ClickException(f"could not open the volume as writer: {exc}") from None
        hub = start_writer_hub(volume, node_id)
    elif peer_writer:
        volume = PeerWriterVolume.open(nodes, node_id, settings, cache_pages)
    else:
        volume = ReaderVolume.open(nodes, node_id, settings, cache_pages)
    service = ComputeService(None, node_id, role, region, az, listen, hub,
                             VolumeConfig(nodes, settings, cache_pages, fault_promote_delay_s, multi_writer),
                             writer_address, on_step_down=stop.set)
    if role == "reader":
        # follow the writer before opening SQLite: a reader must never read at a point
        # it did not get from the writer's redo stream
        service.engine = _Placeholder(volume)
        service.start_following(writer_address)
        if not volume.subscribed.wait(60):
            volume.close()
            raise click.ClickException(f"could not follow the writer at {writer_address} within 60 s; is it up?")
    service.engine_on_connect = pg_functions.register
    if lease is not None:
        lease.start()
    backend = None
    if multi_writer and role == "writer":
        backend = service.primary_backend = PrimaryBackend(volume)
    elif peer_writer:
        service.takes_writes = True
        backend = PeerBackend(volume, node_id, lambda: service.writer_address, commit_timeout_s + 5.0)
    service.engine = Engine(volume, writer=(role == "writer" or peer_writer), on_connect=pg_functions.register,
                            backend=backend)
    if write_forwarding and role == "reader" and not peer_writer:
        service.engine.forwarder = Forwarder(volume, primary_coordinators)
    pg_server = None
    if pg_listen:
        verifier = ScramVerifier.from_password(pg_password) if pg_auth == "scram" else None
        host = pg_listen.rsplit(":", 1)[0]
        pg_server = PgServer(pg_listen, PgConfig(user=pg_user, verifier=verifier), lambda: service.engine,
                             lambda: service.role == "reader" and not service.takes_writes, tls=self_signed_context(host) if pg_tls else None)
        try:
            pg_server.start()
        except OSError as exc:
            service.engine.close()
            volume.close()
            raise click.ClickException(f"cannot listen on {pg_listen} (PostgreSQL): {exc}") from None
    server_ready = threading.Event()
    failure: list[str] = []

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                          ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                                          ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        compute_pb2_grpc.add_ComputeServicer_to_server(service, server)
        add_health(server, serving=lambda: not service.engine.fenced)
        try:
            server.add_insecure_port(listen)
        except RuntimeError as exc:
            failure.append(f"cannot listen on {listen}: {exc} (is the port taken?)")
            server_ready.set()
            return
        await server.start()
        server_ready.set()
        reaper = asyncio.ensure_future(service.reap_idle_sessions(idle_in_transaction_timeout_s))
        while not stop.is_set():
            await asyncio.sleep(0.1)
        reaper.cancel()
        await server.stop(grace=2)

    serving = volume.loop.submit(serve())
    server_ready.wait()
    if failure:
        service.engine.close()
        volume.close()
        raise click.ClickException(failure[0])
    log.info("%s serving on %s (epoch %d, VDL %d)", role, listen, volume.client.epoch, volume.read_lsn)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        if serving.done():
            break
    try:
        serving.result(timeout=10)
    except Exception:
        log.exception("server stopped with an error")
    if pg_server is not None:
        pg_server.stop()
    service.engine.close()
    service.engine.volume.close()
    log.info("stopped")
