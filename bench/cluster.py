"""A throwaway local cluster for benchmarks, started with the real CLI.

`sixfold up` on a temporary data dir and ports of its own (so a cluster the
user runs on the default ports is left alone); `sixfold down --purge` at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from sixfold.volume.placement import StorageNodeInfo

BENCH_STORAGE_PORT = 17100
BENCH_COMPUTE_PORT = 17200


def _sixfold(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sixfold.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sixfold {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


class BenchCluster:
    def __init__(self, readers: int = 1, storage_port: int = BENCH_STORAGE_PORT,
                 compute_port: int = BENCH_COMPUTE_PORT, writers: int = 1, regions: int = 1,
                 up_flags: tuple[str, ...] = ()) -> None:
        self.readers, self.writers, self.regions = readers, writers, regions
        self.up_flags = up_flags   # more `sixfold up` flags, e.g. --write-forwarding
        self.storage_port, self.compute_port = storage_port, compute_port
        self._tmp = tempfile.TemporaryDirectory(prefix="sixfold-bench-cluster-")
        self.data_dir = str(Path(self._tmp.name) / "cluster")

    def __enter__(self) -> "BenchCluster":
        try:
            _sixfold("up", "--data-dir", self.data_dir, "--readers", str(self.readers), "--writers", str(self.writers),
                     "--storage-port", str(self.storage_port), "--compute-port", str(self.compute_port),
                     "--regions", str(self.regions), *self.up_flags, "--json")
            self.nodes = json.loads(_sixfold("status", "--data-dir", self.data_dir, "--json"))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            _sixfold("down", "--data-dir", self.data_dir, "--purge")
        finally:
            self._tmp.cleanup()

    def storage_infos(self) -> list[StorageNodeInfo]:
        return [StorageNodeInfo(node_id=n["name"], az=str(n["az"]), address=n["address"], region=str(n["region"]))
                for n in self.nodes if n["kind"] == "storage"]

    def compute_address(self, role: str) -> str:
        return next(n["address"] for n in self.nodes if n["kind"] == "compute" and n["role"] == role)
