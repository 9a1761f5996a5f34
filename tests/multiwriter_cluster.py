"""Several writer processes on one volume (MULTIWRITER.md): writer-1 is the primary, the
others are peer writers that follow it and commit through it."""

from __future__ import annotations

from pathlib import Path

from tests.compute_cluster import ComputeNodeProcess, storage_spec
from tests.storage_cluster import StorageCluster, free_port


class MultiWriterCluster:
    def __init__(self, root: Path, storage: StorageCluster, writers: int = 2, pages_per_segment: int = 64,
                 pg: bool = False, extra_args: list[str] | None = None) -> None:
        spec = storage_spec(storage)
        self.storage = storage
        self.writers: list[ComputeNodeProcess] = []
        for i in range(writers):
            self.writers.append(ComputeNodeProcess(
                node_id=f"writer-{i + 1}", region_no=1, az_no=i % 3 + 1, index=30 + i,
                data_dir=root / f"writer-{i + 1}", log_path=root / f"writer-{i + 1}" / "stderr.log",
                role="writer", storage_nodes=spec, pages_per_segment=pages_per_segment,
                writer_address=self.writers[0].address if i else "",
                extra_args=["--multi-writer", *(extra_args or [])],
            ))
        if pg:
            for node in self.writers:
                node.pg_port = free_port(node.host)

    @property
    def primary(self) -> ComputeNodeProcess:
        return self.writers[0]

    def start(self) -> None:
        self.primary.start(30)
        for peer in self.writers[1:]:
            peer.spawn()
        for peer in self.writers[1:]:
            peer.wait_healthy(30)

    def close(self) -> None:
        for node in reversed(self.writers):
            try:
                node.kill()
            except Exception:
                pass
