"""Real storage-node processes for tests.

`StorageCluster(tmp_path, azs=3, per_az=2)` starts one `python -m
sixfold.nodes.storage` process per node, each on its own loopback address
127.<region>.<az>.<n> with a free port, and waits until Health answers. Each
node can be killed (SIGKILL), stopped (SIGTERM), paused/resumed
(SIGSTOP/SIGCONT) and restarted with the same data dir and address. Teardown
kills every process the cluster started, by pid, whatever happened before.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from sixfold.rpc import storage_pb2 as pb
from sixfold.rpc import storage_pb2_grpc as pb_grpc
from sixfold.volume.placement import StorageNodeInfo

_LIVE: dict[int, subprocess.Popen] = {}  # every process started here, until reaped


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(eq=False)
class StorageNodeProcess:
    node_id: str
    region_no: int
    az_no: int
    index: int
    data_dir: Path
    log_path: Path
    gossip_interval_ms: int = 100
    extra_args: list[str] = field(default_factory=list)
    host: str = ""
    port: int = 0
    proc: subprocess.Popen | None = None
    paused: bool = False
    _channel: grpc.Channel | None = None

    def __post_init__(self) -> None:
        self.host = self.host or f"127.{self.region_no}.{self.az_no}.{self.index}"
        self.port = self.port or free_port(self.host)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def az(self) -> str:
        return str(self.az_no)

    @property
    def region(self) -> str:
        return str(self.region_no)

    def info(self) -> StorageNodeInfo:
        return StorageNodeInfo(node_id=self.node_id, az=self.az, address=self.address, region=self.region)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "sixfold.nodes.storage",
            "--node-id", self.node_id, "--region", self.region, "--az", self.az,
            "--listen", self.address, "--data-dir", str(self.data_dir),
            "--gossip-interval-ms", str(self.gossip_interval_ms), *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        """Extra environment for the process (secrets stay off the command line)."""
        return {}

    # ------------------------------------------------------------ lifecycle

    def spawn(self) -> None:
        assert not self.running, f"{self.node_id} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.DEVNULL, stderr=log_file, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env()},
            )
        _LIVE[self.proc.pid] = self.proc
        self.paused = False

    def start(self, timeout_s: float = 20.0) -> None:
        self.spawn()
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 20.0) -> pb.HealthResponse:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return self.stub().Health(pb.HealthRequest(), timeout=0.5)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.node_id} not healthy after {timeout_s}s:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is flushed that was not already fsynced."""
        if self.running:
            self.proc.kill()
        self._reap()

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM: a graceful stop; returns the exit code."""
        if self.running:
            if self.paused:
                self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self._reap()
                raise RuntimeError(f"{self.node_id} did not stop within {timeout_s}s:\n{self.log_tail()}") from None
        return self._reap()

    def pause(self) -> None:
        assert self.running
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.running
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout_s: float = 20.0, *, kill: bool = False) -> None:
        """Same data dir and address."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start(timeout_s)

    def _reap(self) -> int:
        if self.proc is None:
            return 0
        code = self.proc.wait()
        _LIVE.pop(self.proc.pid, None)
        self.close_channel()
        return code

    # -------------------------------------------------------------- clients

    def stub(self) -> pb_grpc.StorageStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                self.address,
                options=[("grpc.max_receive_message_length", 32 << 20), ("grpc.max_send_message_length", 32 << 20)],
            )
        return pb_grpc.StorageStub(self._channel)

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class StorageCluster:
    def __init__(
        self,
        tmp_path: Path,
        azs: int = 3,
        per_az: int = 2,
        region: int = 1,
        gossip_interval_ms: int = 100,
        extra_args: list[str] | None = None,
    ) -> None:
        assert 1 <= azs <= 254 and 1 <= per_az <= 254
        self.root = tmp_path
        self.nodes: list[StorageNodeProcess] = [
            StorageNodeProcess(
                node_id=f"s{region}-{az}-{n}", region_no=region, az_no=az, index=n,
                data_dir=tmp_path / f"s{region}-{az}-{n}" / "data",
                log_path=tmp_path / f"s{region}-{az}-{n}" / "stderr.log",
                gossip_interval_ms=gossip_interval_ms, extra_args=list(extra_args or []),
            )
            for az in range(1, azs + 1)
            for n in range(1, per_az + 1)
        ]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node(self, node_id: str) -> StorageNodeProcess:
        return next(n for n in self.nodes if n.node_id == node_id)

    def node_infos(self) -> list[StorageNodeInfo]:
        """What a writer's placement needs: node id, AZ, address, region."""
        return [n.info() for n in self.nodes]

    # per-node faults by id (the same as calling the node's method)
    def kill(self, node_id: str) -> None:
        self.node(node_id).kill()

    def stop(self, node_id: str) -> int:
        return self.node(node_id).stop()

    def pause(self, node_id: str) -> None:
        self.node(node_id).pause()

    def resume(self, node_id: str) -> None:
        self.node(node_id).resume()

    def start_node(self, node_id: str) -> None:
        self.node(node_id).start()

    def restart(self, node_id: str, *, kill: bool = False) -> None:
        self.node(node_id).restart(kill=kill)

    def start(self, timeout_s: float = 30.0) -> None:
        for node in self.nodes:  # all at once: start-up is mostly imports
            node.spawn()
        for node in self.nodes:
            node.wait_healthy(timeout_s)

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.kill()
            except Exception:  # keep killing the others
                pass

    def __enter__(self) -> "StorageCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def errors(self, allow: tuple[str, ...] = ()) -> list[str]:
        """ERROR/CRITICAL lines and tracebacks in the nodes' logs (minus allowed substrings)."""
        found = []
        for node in self.nodes:
            for line in node.log_text().splitlines():
                if (" ERROR " in line or " CRITICAL " in line or "Traceback" in line) and not any(
                    a in line for a in allow
                ):
                    found.append(f"{node.node_id}: {line}")
        return found
