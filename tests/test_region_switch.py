"""Region switchover and failover on real processes (sixfold/globaldb/switch.py): a switchover under
a running writer loses no acknowledged commit; after a failover the old primary, resumed, cannot
commit (it holds no lease), and the new primary takes writes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

import sixfold
from sixfold.runtime import partition
from sixfold.runtime.topology import ClusterSpec, nodes_of, router_addresses
from tests.test_cli import CLI, clean_env, force_teardown, free_ports
from tests.test_global_regions import address_of, cli, rows_in, wait_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
COMMIT_TIMEOUT_S = 4.0   # how long the resumed old primary's commit may wait for a lease before it fails


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("switch") / "cluster"
    storage_port, compute_port = free_ports(regions=2)
    try:
        cli("up", "--data-dir", data_dir, "--regions", 2, "--readers", 1, "--storage-port", storage_port,
            "--compute-port", compute_port, "--commit-timeout-s", COMMIT_TIMEOUT_S, "--json", timeout=240)
        spec = ClusterSpec(regions=2, readers=1, storage_port=storage_port, compute_port=compute_port)
        nodes = nodes_of(spec)
        writer_endpoints = {r: router_addresses([n for n in nodes if n.region == r])["writer"] for r in (1, 2)}
        conn = sixfold.connect(writer_endpoints[1], autocommit=True)
        conn.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)")
        conn.close()
        yield data_dir, writer_endpoints
    finally:
        force_teardown(data_dir)


class Writer(threading.Thread):
    """Inserts 1, 2, 3, ... one commit at a time, through whichever region's writer endpoint
    takes writes; remembers what each attempt's outcome says about the row."""

    def __init__(self, endpoints: dict[int, str]) -> None:
        super().__init__(daemon=True)
        self.endpoints = endpoints
        self.acked: list[int] = []        # acknowledged: must be there afterwards
        self.acked_by: dict[int, int] = {}   # value -> the region whose endpoint acknowledged it
        self.unknown: list[int] = []      # failed during the commit: may or may not be there
        self.stop = threading.Event()

    def run(self) -> None:
        value, region, conn = 0, 1, None
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = sixfold.connect(self.endpoints[region], autocommit=True, timeout_s=5)
                    if conn.role != "writer":
                        raise sixfold.dbapi.OperationalError(f"{conn.node_id} is a {conn.role}")
                except sixfold.dbapi.Error:
                    conn, region = None, 3 - region   # the other region's router, next time
                    time.sleep(0.05)
                    continue
            value += 1
            try:
                conn.cursor().execute("INSERT INTO t (v) VALUES (?)", (value,))
                self.acked_by[value] = region
                self.acked.append(value)
            except sixfold.dbapi.ReadOnlyError:
                pass   # refused before it ran: never there
            except sixfold.dbapi.Error:
                self.unknown.append(value)
                try:
                    conn.close()
                except sixfold.dbapi.Error:
                    pass
                conn = None


def switchover_under_a_writer(data_dir, endpoints: dict[int, str], to_region: int) -> tuple[dict, Writer]:
    """`region switchover --to` while a Writer commits (20 commits before it, 20 after it, in the
    new primary): (its report, the writer, stopped)."""
    writer = Writer(endpoints)
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while len(writer.acked) < 20:
            assert time.monotonic() < deadline, "the writer made no progress before the switchover"
            time.sleep(0.05)
        report = cli("region", "switchover", "--data-dir", data_dir, "--to", to_region, "--json", timeout=300)
        acked_before = len(writer.acked)
        deadline = time.monotonic() + 60
        while len(writer.acked) < acked_before + 20:   # and it goes on, in the new primary
            assert time.monotonic() < deadline, f"no commits after the switchover: {writer.unknown}"
            time.sleep(0.05)
    finally:
        writer.stop.set()
        writer.join(30)
    return report, writer


def test_a_switchover_under_a_running_writer_loses_no_acknowledged_commit(cluster):
    data_dir, endpoints = cluster
    report, writer = switchover_under_a_writer(data_dir, endpoints, 2)
    assert report["kind"] == "switchover" and report["to_region"] == 2 and report["rpo_lsns"] == 0
    assert report["epoch"] > report["fence_epoch"] > 0
    assert report["new_writer"] == "reader-2-1"
    rows = {v for (v,) in rows_in(address_of(data_dir, "reader-2-1"), "SELECT v FROM t")}
    missing = sorted(set(writer.acked) - rows)
    assert not missing, f"acknowledged commits lost by the switchover: {missing}"
    assert rows <= set(writer.acked) | set(writer.unknown), "a row nobody wrote"
    # region 1 is a secondary of region 2 now: the same rows arrive there, and its old writer is a reader
    expected = rows_in(address_of(data_dir, "reader-2-1"), "SELECT id, v FROM t ORDER BY id")
    wait_rows(address_of(data_dir, "reader-1"), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)
    # the switchover returned once the old writer answered as a reader
    assert report["old_writers_reading"] == ["writer-1"]
    status = {n["name"]: n for n in cli("status", "--data-dir", data_dir, "--json")}
    assert status["writer-1"]["role"] == "reader" and status["writer-1"]["health"] == "ok", status["writer-1"]
    assert status["replicator-2"]["health"] == "standby" and status["replicator-1"]["health"] == "ok"
    listed = {e["name"]: e for e in cli("endpoints", "--data-dir", data_dir, "--json")}
    assert listed["writer"]["address"] == endpoints[2] and listed["writer"]["target"] == "reader-2-1"
    wait_rows(address_of(data_dir, "writer-1"), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)


def test_after_a_failover_the_resumed_old_primary_cannot_commit(cluster):
    data_dir, endpoints = cluster
    primary = sixfold.connect(address_of(data_dir, "reader-2-1"), autocommit=True)
    primary.cursor().execute("INSERT INTO t (v) VALUES (-1)")
    primary.close()
    wait_rows(address_of(data_dir, "reader-1"), "SELECT count(*) FROM t WHERE v = -1", [(1,)], timeout_s=30)
    old_writer = sixfold.connect(address_of(data_dir, "reader-2-1"), autocommit=True)   # opened before the pause
    cli("chaos", "pause", "--data-dir", data_dir, "--region", 2, "--json")
    try:
        report = cli("region", "failover", "--data-dir", data_dir, "--to", 1, "--allow-data-loss", "--json",
                     timeout=240)
        assert report["kind"] == "failover" and report["needs_resync"] == [2]
        assert report["rpo_lsns"] >= 0 and report["promoted_at_lsn"] > 0
        new_writer = sixfold.connect(endpoints[1], autocommit=True)
        new_writer.cursor().execute("INSERT INTO t (v) VALUES (-2)")
        assert new_writer.role == "writer"
        new_writer.close()
    finally:
        cli("chaos", "resume", "--data-dir", data_dir, "--region", 2, "--json")
    # the old primary's writer resumes with nothing fenced in its own region; its lease from
    # replicator-1 ran out while it was paused and replicator-1 no longer runs: no acknowledgement
    started = time.monotonic()
    with pytest.raises(sixfold.dbapi.OperationalError, match="lease"):
        old_writer.cursor().execute("INSERT INTO t (v) VALUES (-3)")
    assert time.monotonic() - started >= COMMIT_TIMEOUT_S * 0.9   # it waited for a lease, then gave up
    old_writer.close()
    rows = [v for (v,) in rows_in(address_of(data_dir, "reader-1"), "SELECT v FROM t WHERE v < 0 ORDER BY v")]
    assert rows == [-2, -1]
    status = {n["name"]: n for n in cli("status", "--data-dir", data_dir, "--json")}
    assert status["replicator-2"]["health"] == "standby"   # region 2 needs a resync: it ships nothing
    result = subprocess.run([*CLI, "status", "--data-dir", str(data_dir)], capture_output=True, text=True,
                            timeout=60, env=clean_env())
    assert "region 2: failed over from; needs a resync" in result.stdout and "region 1: primary" in result.stdout
    roles = json.loads((Path(data_dir) / "regions.json").read_text())
    assert roles["primary"] == 1 and roles["needs_resync"] == [2]
    result = subprocess.run([*CLI, "region", "switchover", "--data-dir", str(data_dir), "--to", "2"],
                            capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 2 and "needs a resync" in result.stderr


@pytest.mark.skipif(partition.unavailable_reason() is not None, reason=f"{partition.unavailable_reason()}")
def test_a_primary_cut_off_by_a_partition_stops_acknowledging_and_region_2_takes_over(tmp_path):
    """iptables between the regions: the primary's commits stop once its lease from replicator-2 runs
    out (the cost of the lease); the failover promotes region 2; after the heal the old writer still
    cannot commit."""
    data_dir = tmp_path / "cluster"
    storage_port, compute_port = free_ports(regions=2)
    try:
        cli("up", "--data-dir", data_dir, "--regions", 2, "--readers", 1, "--storage-port", storage_port,
            "--compute-port", compute_port, "--commit-timeout-s", COMMIT_TIMEOUT_S, "--json", timeout=240)
        old_writer = sixfold.connect(address_of(data_dir, "writer-1"), autocommit=True)
        old_writer.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        old_writer.cursor().execute("INSERT INTO t (v) VALUES (1)")
        wait_rows(address_of(data_dir, "reader-2-1"), "SELECT count(*) FROM t", [(1,)], timeout_s=30)
        cli("chaos", "partition", "--data-dir", data_dir, "--region", 2, "--json")
        try:
            time.sleep(3)   # > --lease-s: the lease it held when the partition began has run out
            with pytest.raises(sixfold.dbapi.OperationalError, match="lease"):
                old_writer.cursor().execute("INSERT INTO t (v) VALUES (2)")
            report = cli("region", "failover", "--data-dir", data_dir, "--to", 2, "--allow-data-loss", "--json",
                         timeout=240)
            assert report["needs_resync"] == [1] and report["new_writer"] == "reader-2-1"
            new_writer = sixfold.connect(address_of(data_dir, "reader-2-1"), autocommit=True)
            new_writer.cursor().execute("INSERT INTO t (v) VALUES (3)")
        finally:
            cli("chaos", "heal", "--data-dir", data_dir, "--json")
        with pytest.raises(sixfold.dbapi.OperationalError, match="lease"):
            old_writer.cursor().execute("INSERT INTO t (v) VALUES (4)")
        # (v = 2 is durable in region 1 but was never acknowledged; region 1 needs a resync)
        assert [v for (v,) in new_writer.cursor().execute("SELECT v FROM t ORDER BY v").fetchall()] == [1, 3]
        new_writer.close()
        old_writer.close()
    finally:
        force_teardown(data_dir)
