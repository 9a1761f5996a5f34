"""The docker runtime, driven through the CLI as a user would: `sixfold up --runtime docker`.

A real cluster of containers (six storage nodes over three AZs, a writer, a reader, three
coordinators) on a Docker network of its own, reached from the host on the bridge addresses.
Every cluster is removed at the end, whatever happened, and the test checks that no container
or network of it is left.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from sixfold.runtime import docker, image
from sixfold.runtime.layout import ClusterDir
from tests.test_cli import run

pytestmark = [pytest.mark.container, pytest.mark.slow]

SUBNET = "10.212.0.0/16"   # away from the default (10.201) a user's cluster may have
FAILOVER_WAIT_S = 60.0


def cli_json(*args, timeout: float = 120):
    result = run(*args, "--json", timeout=timeout)
    assert result.returncode == 0, f"sixfold {' '.join(map(str, args))}: {result.stderr}\n{result.stdout}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def docker_cluster(project_image, tmp_path_factory):
    """One cluster for the module (a start costs about 15 s); the tests leave it healed."""
    data_dir = tmp_path_factory.mktemp("docker") / "cluster"
    cluster_id = ClusterDir.at(data_dir).cluster_id
    try:
        up = cli_json("up", "--runtime", "docker", "--image", project_image, "--docker-subnet", SUBNET,
                      "--data-dir", data_dir, "--start-timeout-s", 120, timeout=240)
        yield data_dir, up
    finally:
        down = run("down", "--purge", "--data-dir", data_dir, timeout=180)
        left = docker.leftovers(cluster_id)
        if left:   # never leave them to the next test, then fail
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
            subprocess.run(["docker", "network", "rm", *left], capture_output=True)
        assert down.returncode == 0, down.stderr
        assert not left, f"`sixfold down` left Docker objects behind: {left}"


def sql(data_dir, statement: str, endpoint: str = "writer") -> dict:
    return cli_json("sql", "--data-dir", data_dir, "--endpoint", endpoint, "-c", statement)


def live_writer(data_dir) -> str | None:
    """The writer as the coordinators' catalog and the instance itself both say, or None."""
    nodes = {n["name"]: n for n in cli_json("status", "--data-dir", data_dir)}
    coordinators = [n for n in nodes.values() if n["kind"] == "coordinator" and n["health"] == "ok"]
    writers = {n["name"] for n in nodes.values() if n["kind"] == "compute" and n["role"] == "writer"
               and n["health"] == "ok"}
    named = {c["detail"].split("writer ", 1)[1].split(",", 1)[0] for c in coordinators}
    return next(iter(writers)) if len(writers) == 1 and named == writers else None


@pytest.mark.timeout(600)
def test_pause_and_resume_freeze_containers(docker_cluster):
    data_dir, _ = docker_cluster
    cid = ClusterDir.at(data_dir).cluster_id
    cli_json("chaos", "pause", "--node", "storage-1-3-1", "--data-dir", data_dir)
    nodes = {n["name"]: n for n in cli_json("status", "--data-dir", data_dir)}
    assert nodes["storage-1-3-1"]["health"] == "paused"
    assert docker.inspect_states([docker.container_name(cid, "storage-1-3-1")]).popitem()[1]["status"] == "paused"
    sql(data_dir, "CREATE TABLE p (x INTEGER)")   # five of six answer: the writer is not held up
    sql(data_dir, "INSERT INTO p VALUES (1)")
    cli_json("chaos", "resume", "--node", "storage-1-3-1", "--data-dir", data_dir)
    nodes = {n["name"]: n for n in cli_json("status", "--data-dir", data_dir)}
    assert nodes["storage-1-3-1"]["health"] == "ok"
    assert run("chaos", "partition", "--az", "1", "--data-dir", data_dir).returncode == 2


@pytest.mark.timeout(600)
def test_docker_cluster_takes_writes_and_survives_an_az_kill(docker_cluster):
    data_dir, up = docker_cluster
    cid = ClusterDir.at(data_dir).cluster_id
    by_name = {n["name"]: n for n in up["nodes"]}
    assert len(by_name) == 11
    # one container per node, AZ as label and address block, one network for the region
    for name, n in by_name.items():
        labels = json.loads(subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config.Labels}}", docker.container_name(cid, name)],
            capture_output=True, text=True, check=True).stdout)
        assert labels[docker.LABEL_AZ] == str(n["az"]) and labels[docker.LABEL_NODE] == name
        assert n["host"].startswith(f"10.212.{n['az']}."), n
    assert len(docker.cluster_networks(cid)) == 1
    # the endpoints answer from the host
    eps = {e["name"]: e for e in cli_json("endpoints", "--data-dir", data_dir)}
    assert eps["writer"]["host"].startswith("10.212.") and eps["writer"]["dsn"].count(",") == 2

    sql(data_dir, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    acknowledged = []
    for i in range(5):
        sql(data_dir, f"INSERT INTO t (v) VALUES ('before-{i}')")
        acknowledged.append(f"before-{i}")

    # AZ 1 holds the writer, two storage nodes and the coordinators' leader-to-be: the worst AZ to lose
    killed = cli_json("chaos", "kill", "--az", "1", "--data-dir", data_dir)
    assert sorted(killed["done"]) == sorted(n for n, v in by_name.items() if v["az"] == 1)
    states = docker.inspect_states([docker.container_name(cid, n) for n in killed["done"]])
    assert {s["status"] for s in states.values()} == {"exited"}

    deadline = time.monotonic() + FAILOVER_WAIT_S
    while (writer := live_writer(data_dir)) in (None, "writer-1"):
        assert time.monotonic() < deadline, "no new writer within the wait after AZ 1 was killed"
        time.sleep(0.5)
    # four of six storage copies are left: writes commit, through the writer endpoint's name
    for i in range(5):
        result = sql(data_dir, f"INSERT INTO t (v) VALUES ('after-{i}')")
        assert result[0]["commit_lsn"], result
        acknowledged.append(f"after-{i}")
    rows = sql(data_dir, "SELECT v FROM t ORDER BY id")[0]["rows"]
    assert [r[0] for r in rows] == acknowledged, "an acknowledged write is missing"
    assert writer != "writer-1"

    # heal brings the killed containers back and they answer again
    healed = cli_json("chaos", "heal", "--data-dir", data_dir, timeout=180)
    assert sorted(healed["detail"]["restarted"]) == sorted(killed["done"]) and not healed["detail"].get("not_ready")


def test_image_build_reuses_what_exists(project_image):
    again = image.build()
    assert again.image == project_image
    assert not again.base_built and not again.image_built, again


def test_down_removes_what_a_deleted_data_dir_left_running(project_image, tmp_path):
    """The data dir is gone (deleted under a running cluster): `down` still finds its Docker objects."""
    data_dir = tmp_path / "gone"
    cluster_id = ClusterDir.at(data_dir).cluster_id
    subprocess.run(["docker", "network", "create", "--label", f"{docker.LABEL_CLUSTER}={cluster_id}",
                    f"sixfold-{cluster_id}-region-1"], check=True, capture_output=True)
    try:
        down = run("down", "--data-dir", data_dir)
        assert down.returncode == 0 and "removed 1 container(s) and network(s)" in down.stdout, down.stdout
        assert docker.leftovers(cluster_id) == [] and not data_dir.exists()
    finally:
        subprocess.run(["docker", "network", "rm", f"sixfold-{cluster_id}-region-1"], capture_output=True)
