"""Three real coordinator processes (one per AZ) over a ComputeCluster, with the router's
writer and reader endpoints on one shared address (127.1.0.200, SO_REUSEPORT)."""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from dataclasses import dataclass

import grpc

import sixfold
from sixfold.rpc import coordinator_pb2 as copb
from sixfold.rpc import coordinator_pb2_grpc
from tests.compute_cluster import ComputeCluster, storage_spec
from tests.storage_cluster import StorageNodeProcess, free_port

ENDPOINT_HOST = "127.1.0.200"
CUSTOM_ENDPOINT_SLOTS = 16


def free_port_range(host: str, count: int) -> int:
    """The first of `count` consecutive free ports on `host` (custom endpoints' slots)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


@dataclass(eq=False)
class CoordinatorProcess(StorageNodeProcess):
    raft_port: int = 0
    replicas: str = ""
    instances: str = ""
    writer_endpoint: str = ""
    reader_endpoint: str = ""
    custom_port_base: int = 0
    storage_flags: list[str] | None = None   # --storage-nodes ... --storage-replace-after-s ...

    def __post_init__(self) -> None:
        super().__post_init__()
        self.raft_port = self.raft_port or free_port(self.host)

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sixfold.nodes.coordinator", "--listen", self.address,
                "--raft", self.raft_address, "--replicas", self.replicas, "--instances", self.instances,
                "--writer-endpoint", self.writer_endpoint, "--reader-endpoint", self.reader_endpoint,
                "--custom-endpoint-port-base", str(self.custom_port_base),
                *(self.storage_flags or [])]

    def coordinator_stub(self):
        channel = grpc.insecure_channel(self.address)
        return channel, coordinator_pb2_grpc.CoordinatorStub(channel)

    def catalog(self, timeout_s: float = 2.0) -> copb.CatalogResponse:
        with grpc.insecure_channel(self.address) as channel:
            return coordinator_pb2_grpc.CoordinatorStub(channel).GetCatalog(copb.CatalogRequest(), timeout=timeout_s)

    def failover(self, target: str = "", timeout_s: float = 90.0) -> copb.FailoverResponse:
        with grpc.insecure_channel(self.address) as channel:
            return coordinator_pb2_grpc.CoordinatorStub(channel).Failover(copb.FailoverRequest(target=target),
                                                                         timeout=timeout_s)

    def wait_healthy(self, timeout_s: float = 20.0):
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return self.catalog(0.5)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.node_id} not up after {timeout_s}s:\n{self.log_tail()}") from None
                time.sleep(0.05)


class CoordinatorGroup:
    def __init__(self, root, compute: ComputeCluster, storage_replace_after_s: float | None = None) -> None:
        self.compute = compute
        writer_port, reader_port = free_port(ENDPOINT_HOST), free_port(ENDPOINT_HOST)
        self.writer_endpoint = f"{ENDPOINT_HOST}:{writer_port}"
        self.reader_endpoint = f"{ENDPOINT_HOST}:{reader_port}"
        custom_port_base = free_port_range(ENDPOINT_HOST, CUSTOM_ENDPOINT_SLOTS)
        instances = ",".join(f"{n.node_id}:{n.role}:{n.az}:{i}={n.address}" for i, n in enumerate(compute.nodes))
        self.replicas = [
            CoordinatorProcess(node_id=f"coordinator-{az}", region_no=1, az_no=az, index=200,
                               data_dir=root / f"coordinator-{az}", log_path=root / f"coordinator-{az}" / "stderr.log",
                               instances=instances, writer_endpoint=self.writer_endpoint,
                               reader_endpoint=self.reader_endpoint, custom_port_base=custom_port_base,
                               storage_flags=None if storage_replace_after_s is None else [
                                   "--storage-nodes", storage_spec(compute.storage),
                                   "--storage-replace-after-s", str(storage_replace_after_s)])
            for az in (1, 2, 3)
        ]
        spec = ",".join(f"{c.address}@{c.raft_address}" for c in self.replicas)
        for c in self.replicas:
            c.replicas = spec

    def start(self) -> None:
        for c in self.replicas:
            c.spawn()
        for c in self.replicas:
            c.wait_healthy()
        self.wait(lambda cat: cat.writer and all(i.health == "ok" for i in cat.instances), 30, "a healthy catalog")

    def any_catalog(self) -> copb.CatalogResponse:
        for c in self.replicas:
            if c.running and not c.paused:
                try:
                    return c.catalog()
                except grpc.RpcError:
                    continue
        raise RuntimeError("no coordinator answers")

    def leader(self) -> CoordinatorProcess:
        for c in self.replicas:
            if c.running and not c.paused:
                try:
                    if c.catalog().is_leader:
                        return c
                except grpc.RpcError:
                    pass
        raise RuntimeError("no leader")

    def wait(self, predicate, timeout_s: float, what: str) -> copb.CatalogResponse:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.any_catalog()
                if predicate(last):
                    return last
            except RuntimeError:
                pass
            time.sleep(0.1)
        logs = "\n".join(f"--- {c.node_id}\n{c.log_tail(30)}" for c in self.replicas)
        raise TimeoutError(f"no {what} within {timeout_s}s; last catalog: {last}\n{logs}")

    def close(self) -> None:
        for c in self.replicas:
            try:
                c.kill()
            except Exception:
                pass


class Workload:
    """Inserts unique ids through the writer endpoint; reconnects on any error; records acks."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.acked: list[int] = []
        self.ack_times: list[float] = []
        self.errors = 0
        self.next_id = 1
        self.stop = threading.Event()
        self.running = threading.Event()   # cleared: pause between writes
        self.running.set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = None
        while not self.stop.is_set():
            if not self.running.wait(0.1):
                continue
            try:
                if conn is None:
                    conn = sixfold.connect(self.endpoint, autocommit=True, timeout_s=10)
                row_id = self.next_id
                self.next_id += 1
                conn.execute("INSERT INTO acked (id, at) VALUES (?, ?)", (row_id, time.time()))
                self.acked.append(row_id)
                self.ack_times.append(time.monotonic())
            except sixfold.dbapi.Error:
                self.errors += 1
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
                time.sleep(0.05)

    def start(self) -> "Workload":
        self.thread.start()
        return self

    def first_ack_after(self, t: float, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            later = [a for a in list(self.ack_times) if a > t]
            if later:
                return later[0] - t
            time.sleep(0.05)
        raise AssertionError(f"no write committed within {timeout_s}s (errors so far: {self.errors})")

    def wait_acks(self, n: int, timeout_s: float = 20.0) -> None:
        target = len(self.acked) + n
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < target:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks, wanted {target}"
            time.sleep(0.05)

    def pause(self) -> None:
        """Stops writing (a write in flight finishes); resume() goes on."""
        self.running.clear()
        time.sleep(0.5)

    def resume(self) -> None:
        self.running.set()

    def finish(self) -> list[int]:
        self.stop.set()
        self.thread.join(20)
        return list(self.acked)


def check_acked(endpoint: str, acked: list[int]) -> None:
    with sixfold.connect(endpoint, autocommit=True) as conn:
        present = {row[0] for row in conn.execute("SELECT id FROM acked").fetchall()}
    missing = sorted(set(acked) - present)
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:20]}"
