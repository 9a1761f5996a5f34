"""Real compute-node processes (writer and readers) on top of a StorageCluster."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

import sixfold
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc
from tests.storage_cluster import StorageCluster, StorageNodeProcess, free_port


def storage_spec(cluster: StorageCluster) -> str:
    return ",".join(f"{n.node_id}@{n.az}={n.address}" for n in cluster.nodes)


@dataclass(eq=False)
class ComputeNodeProcess(StorageNodeProcess):
    role: str = "writer"
    storage_nodes: str = ""
    writer_address: str = ""
    volume_id: str = "vol-1"
    pages_per_segment: int = 64
    pg_port: int = 0           # PostgreSQL wire protocol port (0: off)
    pg_password: str = ""      # "": trust

    @property
    def pg_address(self) -> str:
        return f"{self.host}:{self.pg_port}"

    def pg_dsn(self, user: str = "sixfold", dbname: str = "sixfold", **options) -> str:
        extra = "".join(f" {k}={v}" for k, v in options.items())
        password = f" password='{self.pg_password}'" if self.pg_password else ""
        return f"host={self.host} port={self.pg_port} user={user} dbname={dbname}{password}{extra}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "sixfold.nodes.compute",
            "--node-id", self.node_id, "--role", self.role, "--region", self.region, "--az", self.az,
            "--listen", self.address, "--storage-nodes", self.storage_nodes,
            "--volume-id", self.volume_id, "--pages-per-segment", str(self.pages_per_segment),
            *self.extra_args,
        ]
        if self.writer_address:
            cmd += ["--writer-address", self.writer_address]
        if self.pg_port:
            cmd += ["--pg-listen", self.pg_address, "--pg-auth", "scram" if self.pg_password else "trust"]
        return cmd

    def env(self) -> dict[str, str]:
        return {"SIXFOLD_PG_PASSWORD": self.pg_password} if self.pg_password else {}

    def compute_stub(self) -> compute_pb2_grpc.ComputeStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return compute_pb2_grpc.ComputeStub(self._channel)

    def wait_healthy(self, timeout_s: float = 30.0) -> cpb.StatusResponse:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # a reader serves only once it follows the writer's redo stream
                return self.compute_stub().Status(cpb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.node_id} not ready after {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def status(self) -> cpb.StatusResponse:
        return self.compute_stub().Status(cpb.StatusRequest(), timeout=5)

    def connect(self, autocommit: bool = True) -> "sixfold.dbapi.Connection":
        return sixfold.connect(self.address, autocommit=autocommit)


class ComputeCluster:
    """A writer in AZ 1 and `readers` readers spread over the AZs, on 127.<r>.<az>.1x."""

    def __init__(self, root: Path, storage: StorageCluster, readers: int = 1, volume_id: str = "vol-1",
                 pages_per_segment: int = 64, extra_args: list[str] | None = None, pg: bool = False,
                 pg_password: str = "") -> None:
        spec = storage_spec(storage)
        self.storage = storage
        self.writer = ComputeNodeProcess(
            node_id="writer", region_no=1, az_no=1, index=10, data_dir=root / "writer",
            log_path=root / "writer" / "stderr.log", role="writer", storage_nodes=spec,
            volume_id=volume_id, pages_per_segment=pages_per_segment, extra_args=list(extra_args or []),
        )
        self.readers = [
            ComputeNodeProcess(
                node_id=f"reader-{i + 1}", region_no=1, az_no=(i + 1) % 3 + 1, index=11 + i,
                data_dir=root / f"reader-{i + 1}", log_path=root / f"reader-{i + 1}" / "stderr.log",
                role="reader", storage_nodes=spec, writer_address=self.writer.address,
                volume_id=volume_id, pages_per_segment=pages_per_segment, extra_args=list(extra_args or []),
            )
            for i in range(readers)
        ]
        if pg:
            for node in self.nodes:
                node.pg_port = free_port(node.host)
                node.pg_password = pg_password

    @property
    def nodes(self) -> list[ComputeNodeProcess]:
        return [self.writer, *self.readers]

    def start(self) -> None:
        self.writer.start(30)
        for reader in self.readers:
            reader.spawn()
        for reader in self.readers:
            reader.wait_healthy(30)

    def close(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.kill()
            except Exception:
                pass


@contextlib.contextmanager
def started_cluster(root: Path, **compute_options):
    """Six storage processes under root/storage and a ComputeCluster(**compute_options) on
    them, started; both killed on the way out, whatever happened."""
    storage = StorageCluster(root / "storage")
    compute = ComputeCluster(root / "compute", storage, **compute_options)
    try:
        storage.start()
        compute.start()
        yield compute
    finally:
        compute.close()
        storage.close()
