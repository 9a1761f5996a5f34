"""The docker runtime's pure parts and its usage errors (no Docker engine needed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sixfold.cli.main import cli
from sixfold.runtime import docker
from sixfold.runtime.commands import node_args
from sixfold.runtime.local import UsageProblem
from sixfold.runtime.topology import ClusterSpec, nodes_of


def test_container_addresses_keep_the_local_octets_in_the_region_subnet():
    spec = ClusterSpec(readers=2)
    local = {n.name: n for n in nodes_of(spec)}
    for n in docker.docker_nodes(spec, "10.201.0.0/16"):
        _, region, az, octet = local[n.name].host.split(".")
        assert n.host == f"10.{200 + int(region)}.{az}.{octet}" and n.port == local[n.name].port
    assert docker.gateway("10.201.0.0/16", 1) == "10.201.0.1"
    assert str(docker.region_subnet("10.201.0.0/16", 2)) == "10.202.0.0/16"


@pytest.mark.parametrize("subnet", ["10.201.0.0/24", "10.201.0.0/8", "not-a-subnet", "fd00::/16"])
def test_only_an_ipv4_slash_16_is_a_docker_subnet(subnet):
    with pytest.raises(UsageProblem):
        docker.check_subnet(subnet)


def test_each_coordinator_serves_the_endpoints_on_its_own_address_in_containers():
    spec = ClusterSpec()
    nodes = docker.docker_nodes(spec, "10.201.0.0/16")
    for c in [n for n in nodes if n.kind == "coordinator"]:
        args = node_args(c, nodes, spec, {}, "/data", shared_endpoint_address=False)
        flag = dict(zip(args[2::2], args[3::2]))
        for name in ("--writer-endpoint", "--reader-endpoint", "--writer-pg-endpoint", "--reader-pg-endpoint"):
            assert flag[name].rsplit(":", 1)[0] == c.host, (name, flag[name])
    # locally they share the region's endpoint address
    local_nodes = nodes_of(spec)
    shared = {dict(zip(a[2::2], a[3::2]))["--writer-endpoint"]
              for a in (node_args(c, local_nodes, spec, {}, "/d") for c in local_nodes if c.kind == "coordinator")}
    assert shared == {"127.1.0.200:7400"}


def test_docker_options_without_the_docker_runtime_are_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path / "d"), "--image", "x:1"])
    assert result.exit_code == 2 and "--runtime docker" in result.output


def test_runtimes_pick_the_module_from_cluster_json(tmp_path):
    from sixfold.runtime import local, runtimes
    from sixfold.runtime.layout import STATE_FORMAT, ClusterDir

    cdir = ClusterDir.at(tmp_path / "d")
    assert runtimes.of(cdir) is local
    cdir.write_state({"format": STATE_FORMAT, "runtime": "docker", "spec": {}, "nodes": []})
    assert runtimes.of(cdir) is docker


def test_a_local_up_refuses_a_data_dir_that_holds_a_docker_cluster(tmp_path):
    from sixfold.runtime.layout import STATE_FORMAT, ClusterDir

    cdir = ClusterDir.at(tmp_path / "d")
    cdir.write_state({"format": STATE_FORMAT, "runtime": "docker", "spec": {}, "nodes": []})
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(cdir.root)])
    assert result.exit_code == 2 and "holds a docker cluster" in result.output
