"""The cluster topology and the settings table: pure, no processes."""

from __future__ import annotations

import click
import pytest

from sixfold.runtime.settings import SETTINGS, click_options, markdown_table
from sixfold.runtime.topology import (ClusterSpec, TopologyError, endpoints_of, listen_addresses, nodes_of,
                                      raft_address, reader_az,
                                      router_addresses, select_nodes,
                                      storage_node_infos, storage_nodes_flag)
from sixfold.volume.placement import check_topology


def test_default_cluster_nodes_and_addresses():
    nodes = nodes_of(ClusterSpec())
    assert [n.name for n in nodes] == [
        "storage-1-1-1", "storage-1-1-2", "storage-1-2-1", "storage-1-2-2", "storage-1-3-1", "storage-1-3-2",
        "writer-1", "reader-1", "coordinator-1-1", "coordinator-1-2", "coordinator-1-3"]
    by_name = {n.name: n for n in nodes}
    assert by_name["storage-1-2-1"].address == "127.1.2.1:7100"
    assert by_name["writer-1"].address == "127.1.1.100:7200"
    assert by_name["writer-1"].role == "writer" and by_name["writer-1"].az == 1
    assert by_name["reader-1"].address == "127.1.2.101:7200"
    assert by_name["coordinator-1-3"].address == "127.1.3.200:7300"
    assert raft_address(by_name["coordinator-1-3"]) == "127.1.3.200:7301"
    assert router_addresses(nodes) == {"writer": "127.1.0.200:7400", "reader": "127.1.0.200:7401",
                                       "writer-pg": "127.1.0.200:8400", "reader-pg": "127.1.0.200:8401"}
    assert by_name["reader-1"].pg_address == "127.1.2.101:8200"
    for n in nodes:  # the address says where the node lives
        _, region, az, _ = n.host.split(".")
        assert (int(region), int(az)) == (n.region, n.az)


def test_readers_round_robin_over_azs_2_3_1():
    spec = ClusterSpec(readers=15, storage_per_az=3)
    readers = [n for n in nodes_of(spec) if n.role == "reader"]
    assert [r.az for r in readers[:6]] == [2, 3, 1, 2, 3, 1]
    assert [reader_az(i) for i in range(1, 4)] == [2, 3, 1]
    assert readers[-1].host == "127.1.1.115"  # reader 15: AZs 2,3,1 repeat
    hosts = [n.host for n in nodes_of(spec)]
    assert len(hosts) == len(set(hosts))
    assert sum(n.kind == "storage" for n in nodes_of(spec)) == 9


@pytest.mark.parametrize("kwargs, words", [
    ({"azs": 2}, "exactly 3 AZs"),
    ({"azs": 4}, "exactly 3 AZs"),
    ({"storage_per_az": 1}, "at least 2"),
    ({"storage_per_az": 100}, "at most 99"),
    ({"readers": 16}, "0 to 15"),
    ({"readers": -1}, "0 to 15"),
    ({"writers": 9}, "1 to 8 writers"),
    ({"writers": 0}, "1 to 8 writers"),
    ({"regions": 0}, "1 to 9 regions"),
    ({"regions": 10}, "1 to 9 regions"),
    ({"regions": 2, "storage_port": 7350}, "replicators' port"),
    ({"writers": 2, "regions": 2}, "secondary regions"),
    ({"storage_port": 7200}, "must differ"),
    ({"compute_port": 70000}, "1..65535"),
    ({"volume_id": "a b"}, "--volume-id"),
])
def test_impossible_specs_say_why(kwargs, words):
    spec = ClusterSpec(**kwargs)
    with pytest.raises(TopologyError, match=words):
        spec.validate()
    with pytest.raises(TopologyError):
        nodes_of(spec)


def test_every_problem_is_reported_at_once():
    problems = ClusterSpec(azs=2, writers=9, readers=20).problems()
    assert len(problems) == 3


def test_peer_writers_follow_the_primary_and_have_their_own_addresses():
    nodes = nodes_of(ClusterSpec(writers=3, readers=15))
    compute = [n for n in nodes if n.kind == "compute"]
    assert [n.name for n in compute[:3]] == ["writer-1", "writer-2", "writer-3"]
    assert [(n.role, n.takes_writes, n.az) for n in compute[:3]] == [
        ("writer", False, 1), ("reader", True, 2), ("reader", True, 3)]
    assert not any(n.takes_writes for n in compute[3:])
    assert len({n.host for n in nodes}) == len(nodes)


def test_storage_nodes_flag_is_what_compute_nodes_accept():
    nodes = nodes_of(ClusterSpec(storage_per_az=3))
    flag = storage_nodes_flag(nodes)
    assert flag.split(",")[0] == "storage-1-1-1@1=127.1.1.1:7100"
    check_topology(storage_node_infos(nodes))
    from sixfold.nodes.compute.main import parse_storage_nodes

    parsed = parse_storage_nodes(flag)
    assert [p.address for p in parsed] == [n.address for n in nodes if n.kind == "storage"]


def test_endpoints():
    eps = endpoints_of(nodes_of(ClusterSpec(readers=2)))
    assert [(e.name, e.kind, e.target) for e in eps] == [
        ("writer", "writer", "router"), ("reader", "reader", "router"),
        ("writer-1", "instance", "writer-1"), ("reader-1", "instance", "reader-1"),
        ("reader-2", "instance", "reader-2")]
    assert eps[0].to_dict() == {"name": "writer", "kind": "writer", "host": "127.1.0.200", "port": 7400,
                                "target": "router", "address": "127.1.0.200:7400", "pg_port": 8400,
                                "pg_address": "127.1.0.200:8400",
                                "dsn": "postgresql://sixfold@127.1.0.200:8400/sixfold"}
    assert eps[3].pg_address == "127.1.2.101:8200"
    no_readers = endpoints_of(nodes_of(ClusterSpec(readers=0)))
    assert no_readers[1].name == "reader" and no_readers[1].address == "127.1.0.200:7401"


def test_select_nodes():
    nodes = nodes_of(ClusterSpec(readers=2))
    names = lambda **kw: [n.name for n in select_nodes(nodes, **kw)]  # noqa: E731
    assert names(azs=(3,)) == ["storage-1-3-1", "storage-1-3-2", "reader-2", "coordinator-1-3"]
    assert names(writer=True, readers=True) == ["writer-1", "reader-1", "reader-2"]
    assert names(names=("storage-1-1-2",), storage=False) == ["storage-1-1-2"]
    assert len(names(all_nodes=True)) == 12
    assert len(names(storage=True)) == 6
    with pytest.raises(TopologyError, match="no node named nope"):
        select_nodes(nodes, names=("nope",))
    with pytest.raises(TopologyError, match="no AZ 4"):
        select_nodes(nodes, azs=(4,))


def test_spec_round_trip_and_shape_differences():
    spec = ClusterSpec(readers=3, storage_port=9000)
    assert ClusterSpec.from_dict({**spec.to_dict(), "unknown_future_field": 1}) == spec
    assert spec.shape_differences(ClusterSpec(readers=1, storage_port=1)) == ["readers: 3 -> 1"]


def test_settings_table_is_consistent():
    flags = [s.flag for s in SETTINGS]
    envs = [s.env for s in SETTINGS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    assert all(e.startswith("SIXFOLD_") for e in envs)
    cluster_fields = {s.name for s in SETTINGS if s.scope == "cluster"}
    assert cluster_fields <= set(ClusterSpec.__dataclass_fields__)
    defaults = ClusterSpec()
    for s in SETTINGS:
        if s.scope == "cluster":
            assert getattr(defaults, s.name) == s.default, f"{s.name}: the table and ClusterSpec disagree"
    table = markdown_table()
    assert all(f"`{f}`" in table for f in flags)

    @click.command()
    @click_options("readers", "azs")
    def probe(readers, azs):
        click.echo(f"{readers} {azs}")

    from click.testing import CliRunner

    assert CliRunner().invoke(probe, [], env={"SIXFOLD_READERS": "4"}).output.strip() == "4 3"


def test_readme_settings_table_is_generated_from_the_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, ("README's settings table is out of date: paste "
                                        "`python -c 'from sixfold.runtime.settings import markdown_table as m; print(m())'`")


def test_secondary_regions_have_their_own_storage_readers_coordinators_and_a_replicator():
    nodes = nodes_of(ClusterSpec(regions=3, readers=2))
    one_region = nodes_of(ClusterSpec(readers=2))
    # the primary region is the cluster it always was, plus its standby replicator (it ships into
    # region 1 once region 1 is a secondary: sixfold/globaldb/roles.py)
    assert [n for n in nodes if n.region == 1 and n.kind != "replicator"] == one_region
    assert [n.address for n in nodes if n.region == 1 and n.kind == "replicator"] == ["127.1.1.210:7350"]
    assert not any(n.kind == "replicator" for n in one_region)
    second = [n for n in nodes if n.region == 2]
    assert [n.name for n in second] == [
        "storage-2-1-1", "storage-2-1-2", "storage-2-2-1", "storage-2-2-2", "storage-2-3-1", "storage-2-3-2",
        "replicator-2", "reader-2-1", "reader-2-2", "coordinator-2-1", "coordinator-2-2", "coordinator-2-3"]
    assert not any(n.role == "writer" for n in second)
    by_name = {n.name: n for n in nodes}
    assert by_name["replicator-3"].address == "127.3.1.210:7350"
    assert by_name["reader-2-1"].address == "127.2.2.101:7200"
    for n in nodes:
        assert n.host.split(".")[1] == str(n.region)
    endpoints = {e.name: e for e in endpoints_of(nodes)}
    assert endpoints["writer"].address == "127.1.0.200:7400"
    assert endpoints["region-2-reader"].address == "127.2.0.200:7401"
    assert endpoints["region-3-reader"].pg_address == "127.3.0.200:8401"
    assert "region-1-reader" not in endpoints and "replicator-2" not in endpoints
    listen = listen_addresses(nodes)
    assert len(listen) == len(set(listen))
    assert ("127.2.0.200", 7401) in listen and ("127.3.0.200", 8400) in listen
