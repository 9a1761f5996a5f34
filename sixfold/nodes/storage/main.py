"""`sixfold storage-node`: one storage node process.

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 1 on a fatal error (for
example a failed fsync), 2 for bad usage (bad listen address, unusable data
dir), 3 when the listen port is already in use.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import click

from sixfold.nodes.storage.gossip import GossipConfig, Gossiper
from sixfold.nodes.storage.node import SHIPPING_RETAIN_S, NodeConfig, StorageNode
from sixfold.nodes.storage.server import build_server

log = logging.getLogger("sixfold.storage")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PORT_IN_USE = 3


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not host:port with a port in 1..65535", param_hint="--listen")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise click.BadParameter(f"cannot resolve {host!r}: {e.strerror}", param_hint="--listen") from None
    return host, int(port)


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            probe.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def lock_data_dir(data_dir: Path) -> int:
    """Creates the dir, checks it is writable and takes an exclusive lock for our lifetime."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-probe"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"ok")
        os.fsync(fd)
        os.close(fd)
        probe.unlink()
        lock_fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise click.BadParameter(
            f"{data_dir} is not a writable directory: {e.strerror}", param_hint="--data-dir"
        ) from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        raise click.BadParameter(f"{data_dir} is in use by another storage node", param_hint="--data-dir") from None
    return lock_fd


def option(*args, **kwargs):
    """click.option that shows its environment variable in --help."""
    return click.option(*args, show_envvar=True, **kwargs)


def configure_logging(level: str, node_id: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format=f"%(asctime)s.%(msecs)03d %(levelname)s {node_id} %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


@click.command("storage-node", context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@option("--node-id", envvar="SIXFOLD_NODE_ID", required=True, help="Unique id of this node.")
@option("--region", envvar="SIXFOLD_REGION", default="1")
@option("--az", envvar="SIXFOLD_AZ", required=True, help="Availability zone of this node.")
@option("--listen", envvar="SIXFOLD_LISTEN", required=True, help="host:port to serve gRPC on.")
@option("--advertise", envvar="SIXFOLD_ADVERTISE", default=None,
              help="host:port that PG member lists use for this node [default: --listen].")
@option("--data-dir", envvar="SIXFOLD_DATA_DIR", required=True, type=click.Path(path_type=Path))
@option("--gossip-interval-ms", envvar="SIXFOLD_GOSSIP_INTERVAL_MS", default=100,
              type=click.IntRange(10, 60_000))
@option("--log-file-size-bytes", envvar="SIXFOLD_LOG_FILE_SIZE_BYTES", default=64 * 1024 * 1024,
              show_default=True, type=click.IntRange(4096), help="Rotate the durable log past this size.")
@option("--materialise-interval-ms", envvar="SIXFOLD_MATERIALISE_INTERVAL_MS", default=100, hidden=True,
              type=click.IntRange(1), help="Testing knob: how often the materialiser runs.")
@option("--shipping-retain-s", envvar="SIXFOLD_SHIPPING_RETAIN_S", default=SHIPPING_RETAIN_S,
        type=click.FloatRange(0.5), help="Keep the records a secondary region's replicator has not shipped "
        "this long after it last asked (a region cut off for longer needs `sixfold region resync`).")
@option("--log-level", envvar="SIXFOLD_LOG_LEVEL", default="INFO",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def storage_node(node_id: str, region: str, az: str, listen: str, advertise: str | None, data_dir: Path,
                 gossip_interval_ms: int, log_file_size_bytes: int, materialise_interval_ms: int,
                 shipping_retain_s: float, log_level: str) -> None:
    """Run a storage node: segment replicas, durable log, page store, gossip."""
    configure_logging(log_level, node_id)
    host, port = parse_listen(listen)
    if advertise is not None:
        parse_listen(advertise)
    lock_fd = lock_data_dir(data_dir)
    config = NodeConfig(
        node_id=node_id, region=region, az=az, address=advertise or listen, data_dir=data_dir,
        gossip_interval_ms=gossip_interval_ms, log_file_size_bytes=log_file_size_bytes,
        materialise_interval_ms=materialise_interval_ms, shipping_retain_s=shipping_retain_s,
    )
    try:
        code = asyncio.run(serve(config, listen, host, port))
    finally:
        os.close(lock_fd)
    sys.exit(code)


async def serve(config: NodeConfig, listen: str, host: str, port: int) -> int:
    node = StorageNode(config)
    try:
        server, _ = build_server(node, listen)  # bind first: fail fast, before touching data
    except RuntimeError as e:
        if port_in_use(host, port):
            log.error("cannot listen on %s: the address is already in use", listen)
            return EXIT_PORT_IN_USE
        log.error("cannot listen on %s: %s", listen, e)
        return EXIT_USAGE
    await node.open()
    gossiper = Gossiper(node, GossipConfig(interval_ms=config.gossip_interval_ms))
    await server.start()
    gossiper.start()
    log.info("storage node %s (region %s, az %s) serving on %s, data in %s",
             config.node_id, config.region, config.az, listen, config.data_dir)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_wait = asyncio.create_task(stop.wait())
    failed_wait = asyncio.create_task(node.log.failed.wait())
    await asyncio.wait([stop_wait, failed_wait], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    failed_wait.cancel()
    failed = node.log.failed.is_set()
    log.info("stopping (%s)", "log failure" if failed else "signal")
    await gossiper.close()
    await server.stop(grace=1.0)
    await node.close()
    log.info("stopped")
    return EXIT_FAILED if failed else 0
