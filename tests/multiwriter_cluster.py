"""Several writer processes on one volume (MULTIWRITER.md): writer-1 is the primary, the
others are peer writers that follow it and commit through it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sixfold import dbapi
from sixfold.chaos import history as H
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


def run_workload(addresses: list[str], workload, time_s: float, clients_per_writer: int = 2,
                 nemesis=None) -> list[dict]:
    """Clients spread over every writer address (reads too; the first one sets up); returns
    the history's ops. nemesis(deadline, history) runs on the calling thread meanwhile."""
    conn = dbapi.connect(addresses[0])
    workload.setup(conn)
    conn.close()
    history = H.History()
    deadline = time.monotonic() + time_s
    concurrency = clients_per_writer * len(addresses)

    def client(process: int) -> None:
        address = addresses[process % len(addresses)]
        conn = None
        while time.monotonic() < deadline:
            f, value = workload.next_op()
            history.append(H.INVOKE, f, process, value, endpoint=address)
            outcome, result, error = H.INFO, value, None
            try:
                if conn is None:
                    conn = dbapi.connect(address, timeout_s=5)
                outcome, result = workload.apply(conn, f, value)
            except dbapi.Error as exc:
                outcome, error = H.FAIL, f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - Unknown: at COMMIT
                error = f"{type(exc).__name__}: {exc}"
            if outcome == H.INFO and workload.is_read_only(f, value):
                outcome = H.FAIL
            history.append(outcome, f, process, result if outcome != H.INFO else value, error=error)
            if error:
                try:
                    if conn is not None:
                        conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
                if outcome == H.INFO:
                    process += concurrency
                time.sleep(0.02)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(p,), daemon=True) for p in range(concurrency)]
    for t in threads:
        t.start()
    if nemesis is not None:
        nemesis(deadline, history)
    for t in threads:
        t.join(time_s + 60)
    return history.ops


# Snapshot isolation (what multi-writer offers, MULTIWRITER.md) allows G2: a cycle with two or
# more anti-dependency (rw) edges is write skew across pages. Everything else is forbidden:
# G0, G1a/b/c, G-single (one rw edge: a read skew or lost update), and the checker's
# structural findings (duplicates, an acknowledged append missing from the final read, ...).
# (The checker looks for a G-single among the first 500 rw edges of each component.)
ALLOWED_UNDER_SNAPSHOT_ISOLATION = {"G2"}


def assert_snapshot_isolation(verdict: dict) -> None:
    forbidden = set(verdict["anomaly_types"]) - ALLOWED_UNDER_SNAPSHOT_ISOLATION
    assert not forbidden, {k: v for k, v in verdict.items() if k != "stats"}
