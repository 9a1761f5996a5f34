"""`python -m sixfold.globaldb`: a secondary region's replicator (DESIGN.md)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click
import grpc

from sixfold.client.quorum import ClientSettings
from sixfold.globaldb.mirror import MirrorClient
from sixfold.globaldb.replicator import Replicator, ReplicatorService
from sixfold.nodes.compute.main import parse_storage_nodes
from sixfold.rpc import compute_pb2_grpc
from sixfold.rpc.health import add_health

log = logging.getLogger("sixfold.replicator")


@click.command("replicator")
@click.option("--node-id", envvar="SIXFOLD_NODE_ID", required=True, help="This replicator's name.")
@click.option("--region", envvar="SIXFOLD_REGION", required=True, help="The secondary region it fills.")
@click.option("--az", envvar="SIXFOLD_AZ", default="1", show_default=True)
@click.option("--listen", envvar="SIXFOLD_LISTEN", required=True,
              help="HOST:PORT of its Compute service (Status, and the redo stream the region's readers follow).")
@click.option("--data-dir", envvar="SIXFOLD_DATA_DIR", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Where it records its durable position (position.json).")
@click.option("--source-storage-nodes", envvar="SIXFOLD_SOURCE_STORAGE_NODES", required=True,
              help="The primary region's storage nodes, ID@AZ=HOST:PORT,...: where the log comes from.")
@click.option("--storage-nodes", envvar="SIXFOLD_STORAGE_NODES", required=True,
              help="This region's storage nodes, ID@AZ=HOST:PORT,...: where it goes.")
@click.option("--volume-id", envvar="SIXFOLD_VOLUME_ID", default="vol-1", show_default=True)
@click.option("--pages-per-segment", envvar="SIXFOLD_PAGES_PER_SEGMENT", type=click.IntRange(1), default=256,
              show_default=True)
@click.option("--metrics-listen", envvar="SIXFOLD_METRICS_LISTEN", default="",
              help="HOST:PORT for Prometheus metrics (/metrics): replication lag, VDLs, health. Off if empty.")
def replicator(node_id, region, az, listen, data_dir, source_storage_nodes, storage_nodes, volume_id,
               pages_per_segment, metrics_listen) -> None:
    """Ship the primary region's log into this region's storage and feed this region's readers."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {node_id} %(name)s: %(message)s")
    source = parse_storage_nodes(source_storage_nodes)
    nodes = parse_storage_nodes(storage_nodes)
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = ClientSettings(volume_id=volume_id, pages_per_segment=pages_per_segment, local_az=az)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        mirror = MirrorClient(nodes, node_id, settings)
        rep = Replicator(node_id, source, mirror, data_dir)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                          ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        compute_pb2_grpc.add_ComputeServicer_to_server(ReplicatorService(rep, node_id, region, az, listen), server)
        add_health(server)
        try:
            server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise click.ClickException(f"cannot listen on {listen}: {exc} (is the port taken?)") from None
        await server.start()
        if metrics_listen:
            from sixfold.globaldb.metrics import ReplicatorCollector, serve_metrics

            try:
                serve_metrics(metrics_listen, ReplicatorCollector(rep, region))
            except OSError as exc:
                raise click.ClickException(f"cannot serve metrics on {metrics_listen}: {exc}") from None
        log.info("replicator for region %s serving on %s; source: %s", region, listen,
                 ", ".join(n.address for n in source))
        try:
            await rep.run(stop)
        finally:
            await server.stop(grace=1)
            await rep.close()

    asyncio.run(main())
