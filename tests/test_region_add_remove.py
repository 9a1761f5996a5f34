"""`sixfold region add|remove` on a running global cluster, real processes (sixfold/runtime/regions.py):
a region added under a running writer joins with every acknowledged row, and from then on the
primary writer acknowledges nothing without its replicator's lease; a removed region takes its
lease with it (commits go on), its nodes and copies are gone, and the primary cannot be removed."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import sixfold
from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.topology import ClusterSpec, nodes_of, router_addresses
from tests.test_cli import CLI, clean_env, force_teardown, free_ports
from tests.test_global_regions import address_of, cli, rows_in, wait_rows
from tests.test_region_switch import Writer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
COMMIT_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("regions") / "cluster"
    storage_port, compute_port = free_ports(regions=3)   # region 3 comes later, on the same ports
    try:
        cli("up", "--data-dir", data_dir, "--regions", 2, "--readers", 1, "--storage-port", storage_port,
            "--compute-port", compute_port, "--commit-timeout-s", COMMIT_TIMEOUT_S, "--json", timeout=240)
        spec = ClusterSpec(regions=2, readers=1, storage_port=storage_port, compute_port=compute_port)
        writer_endpoint = router_addresses([n for n in nodes_of(spec) if n.region == 1])["writer"]
        conn = sixfold.connect(writer_endpoint, autocommit=True)
        conn.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)")
        conn.close()
        yield data_dir, writer_endpoint
    finally:
        force_teardown(data_dir)


def wait_acked(writer: Writer, more: int, timeout_s: float = 60) -> None:
    target = len(writer.acked) + more
    deadline = time.monotonic() + timeout_s
    while len(writer.acked) < target:
        assert time.monotonic() < deadline, f"the writer stalled at {len(writer.acked)} acks: {writer.unknown[-5:]}"
        time.sleep(0.05)


def insert_one(endpoint: str, value: int) -> None:
    conn = sixfold.connect(endpoint, autocommit=True, timeout_s=COMMIT_TIMEOUT_S * 3)
    try:
        conn.cursor().execute("INSERT INTO t (v) VALUES (?)", (value,))
    finally:
        conn.close()


def test_a_region_added_under_load_joins_with_every_row_and_then_its_lease_is_needed(cluster):
    data_dir, endpoint = cluster
    writer = Writer({1: endpoint, 2: endpoint})
    writer.start()
    try:
        wait_acked(writer, 50)
        report = cli("region", "add", "--data-dir", data_dir, "--json", timeout=400)
        wait_acked(writer, 20)   # the add never stalled the primary
    finally:
        writer.stop.set()
        writer.join(30)
    assert report["region"] == 3 and "replicator-3" in report["nodes"] and "reader-3-1" in report["nodes"]
    assert report["vdl"] >= report["primary_vdl_at_start"] > 0
    expected = rows_in(endpoint, "SELECT id, v FROM t ORDER BY id")
    assert {v for _, v in expected} >= set(writer.acked)
    wait_rows(address_of(data_dir, "reader-3-1"), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)
    cdir = ClusterDir.at(data_dir)
    roles = json.loads((cdir.root / "regions.json").read_text())
    assert "3" in roles["replicators"] and roles["joining"] == []
    assert json.loads(cdir.state_file.read_text())["spec"]["regions"] == 3

    # it has joined: the primary writer needs its lease (region 3 could be promoted now)
    cli("chaos", "pause", "--data-dir", data_dir, "--node", "replicator-3", "--json")
    try:
        time.sleep(2.0 + 0.5)   # the lease (--lease-s 2) it held runs out
        with pytest.raises(sixfold.dbapi.Error):
            insert_one(endpoint, 10_000_001)
    finally:
        cli("chaos", "resume", "--data-dir", data_dir, "--node", "replicator-3", "--json")
    insert_one(endpoint, 10_000_002)


def test_a_removed_region_takes_its_lease_and_its_copies_with_it(cluster):
    data_dir, endpoint = cluster
    cdir = ClusterDir.at(data_dir)
    if not cdir.node_dir("replicator-3").exists():
        pytest.skip("needs the region added by the test before")
    writer = Writer({1: endpoint, 2: endpoint})
    writer.start()
    try:
        wait_acked(writer, 20)
        report = cli("region", "remove", "3", "--data-dir", data_dir, "--json", timeout=120)
        wait_acked(writer, 20)   # no lease of region 3 is needed any more
    finally:
        writer.stop.set()
        writer.join(30)
    assert report["region"] == 3 and "storage-3-1-1" in report["removed"]
    left = [n["name"] for n in cli("status", "--data-dir", data_dir, "--json") if int(n["region"]) == 3]
    assert not left, left
    assert not cdir.node_data("storage-3-1-1").exists()
    assert json.loads(cdir.state_file.read_text())["spec"]["removed_regions"] == [3]
    # region 2 still follows, and the primary cannot be removed
    expected = rows_in(endpoint, "SELECT id, v FROM t ORDER BY id")
    wait_rows(address_of(data_dir, "reader-2-1"), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)
    refused = subprocess.run([*CLI, "region", "remove", "1", "--data-dir", str(data_dir)], capture_output=True,
                             text=True, timeout=60, env=clean_env())
    assert refused.returncode == 2 and "is the primary" in refused.stderr, refused.stderr
