"""Role changes with three regions, real processes (sixfold/globaldb/switch.py): in a switchover the
third region reaches the fence too and then follows the new primary; after a failover every region
but the promoted one needs a resync (one may hold a tail the promoted region never had)."""

from __future__ import annotations

import json

import pytest

import sixfold
from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.topology import ClusterSpec, nodes_of, router_addresses
from tests.test_cli import force_teardown, free_ports
from tests.test_global_regions import address_of, cli, rows_in, wait_rows
from tests.test_region_switch import COMMIT_TIMEOUT_S, switchover_under_a_writer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("three") / "cluster"
    storage_port, compute_port = free_ports(regions=3)
    try:
        cli("up", "--data-dir", data_dir, "--regions", 3, "--readers", 1, "--storage-port", storage_port,
            "--compute-port", compute_port, "--commit-timeout-s", COMMIT_TIMEOUT_S, "--json", timeout=300)
        spec = ClusterSpec(regions=3, readers=1, storage_port=storage_port, compute_port=compute_port)
        nodes = nodes_of(spec)
        endpoints = {r: router_addresses([n for n in nodes if n.region == r])["writer"] for r in (1, 2, 3)}
        conn = sixfold.connect(endpoints[1], autocommit=True)
        conn.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)")
        conn.close()
        yield data_dir, endpoints
    finally:
        force_teardown(data_dir)


def test_a_switchover_with_three_regions_loses_nothing_and_the_third_follows_the_new_primary(cluster):
    data_dir, endpoints = cluster
    report, writer = switchover_under_a_writer(data_dir, {1: endpoints[1], 2: endpoints[2]}, 2)
    assert report["to_region"] == 2 and report["rpo_lsns"] == 0 and report["followers"] == [3]
    expected = rows_in(address_of(data_dir, "reader-2-1"), "SELECT id, v FROM t ORDER BY id")
    missing = sorted(set(writer.acked) - {v for _, v in expected})
    assert not missing, f"acknowledged commits lost by the switchover: {missing}"
    # region 3 follows region 2 now: the rows written after the switchover arrive there
    for reader in ("reader-3-1", "reader-1"):
        wait_rows(address_of(data_dir, reader), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)
    status = {n["name"]: n for n in cli("status", "--data-dir", data_dir, "--json")}
    assert status["replicator-3"]["health"] == "ok" and status["replicator-3"]["epoch"] >= report["epoch"]


def test_after_a_failover_with_three_regions_every_other_region_needs_a_resync(cluster):
    data_dir, endpoints = cluster
    cli("chaos", "pause", "--data-dir", data_dir, "--region", 2, "--json")
    try:
        report = cli("region", "failover", "--data-dir", data_dir, "--to", 3, "--allow-data-loss", "--json",
                     timeout=300)
        new_writer = sixfold.connect(endpoints[3], autocommit=True)
        assert new_writer.role == "writer"
        new_writer.cursor().execute("INSERT INTO t (v) VALUES (-1)")
        new_writer.close()
    finally:
        cli("chaos", "resume", "--data-dir", data_dir, "--region", 2, "--json")
    assert report["to_region"] == 3 and sorted(report["needs_resync"]) == [1, 2]
    roles = json.loads((ClusterDir.at(data_dir).root / "regions.json").read_text())
    assert roles["primary"] == 3 and roles["needs_resync"] == [1, 2]
    status = {n["name"]: n for n in cli("status", "--data-dir", data_dir, "--json")}
    assert status["replicator-1"]["health"] == "standby" and status["replicator-2"]["health"] == "standby"
    assert rows_in(address_of(data_dir, "reader-3-1"), "SELECT count(*) FROM t WHERE v = -1") == [(1,)]


def test_both_regions_failed_over_from_rejoin_after_a_resync_and_can_be_switched_to(cluster):
    data_dir, endpoints = cluster
    for region in (1, 2):
        report = cli("region", "resync", str(region), "--data-dir", data_dir, "--json", timeout=300)
        assert report["region"] == region and report["primary"] == 3
    roles = json.loads((ClusterDir.at(data_dir).root / "regions.json").read_text())
    assert roles["needs_resync"] == [] and roles["joining"] == []
    conn = sixfold.connect(endpoints[3], autocommit=True)
    conn.cursor().execute("INSERT INTO t (v) VALUES (-2)")
    conn.close()
    expected = rows_in(address_of(data_dir, "reader-3-1"), "SELECT id, v FROM t ORDER BY id")
    for reader in ("reader-1", "reader-2-1"):
        wait_rows(address_of(data_dir, reader), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)
    # every region follows region 3 again: a switchover back to region 1 takes region 2 along
    report = cli("region", "switchover", "--data-dir", data_dir, "--to", 1, "--json", timeout=300)
    assert report["rpo_lsns"] == 0 and report["followers"] == [2]
    # reader-3-1 was region 3's writer: it restarted as a reader before the switchover returned
    assert report["old_writers_reading"] == ["reader-3-1"]
    conn = sixfold.connect(endpoints[1], autocommit=True)
    conn.cursor().execute("INSERT INTO t (v) VALUES (-3)")
    conn.close()
    expected = rows_in(endpoints[1], "SELECT id, v FROM t ORDER BY id")
    for reader in ("reader-2-1", "reader-3-1"):
        wait_rows(address_of(data_dir, reader), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)
