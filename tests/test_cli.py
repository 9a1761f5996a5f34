"""The `sixfold` command: help, usage errors, and a real local cluster driven through the CLI.

The fast tests use click's CliRunner. The slow ones run `python -m sixfold.cli`
as a user would, against one module-scoped cluster (a start costs a few seconds)
in a temporary --data-dir on random free ports; every cluster a test starts is
torn down by pid at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from sixfold.nodes.coordinator.router import LEADERLESS_GRACE_S
from click.testing import CliRunner

from sixfold.cli.main import cli
from sixfold.runtime import partition, procs
from sixfold.runtime.layout import ClusterDir
from sixfold.runtime.topology import ClusterSpec, listen_addresses, nodes_of

CLI = [sys.executable, "-m", "sixfold.cli"]
STATUS_FIELDS = {"name", "kind", "role", "region", "az", "address", "pid", "health", "epoch", "scl", "vdl",
                 "replica_lag_ms_p50", "replica_lag_ms_p99"}
ENDPOINT_FIELDS = {"name", "kind", "host", "port", "address", "target", "pg_port", "pg_address", "dsn"}
CHAOS_FIELDS = {"ts", "unix_s", "action", "targets", "ok", "detail"}


# ---------------------------------------------------------------- helpers


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIXFOLD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(*args, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, input=input,
                          timeout=timeout, env=clean_env())


def free_ports(readers: int = 1, writers: int = 1, regions: int = 1) -> tuple[int, int]:
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20_000, 40_000, 2)
        spec = ClusterSpec(storage_port=base, compute_port=base + 1, readers=readers, writers=writers,
                           regions=regions)
        if not any(procs.port_taken(host, port) for host, port in listen_addresses(nodes_of(spec))):
            return base, base + 1
    raise RuntimeError("no free ports")


def force_teardown(data_dir: Path) -> None:
    """`down`, then SIGKILL anything of this cluster still alive and remove its iptables chains."""
    try:
        run("down", "--data-dir", data_dir, timeout=90)
    except subprocess.TimeoutExpired:
        pass
    cdir = ClusterDir.at(data_dir)
    for pid in procs.cluster_processes(cdir.root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if os.geteuid() == 0 and partition.iptables_path():
        partition.remove_all(cdir.cluster_id)
    partition.remove_cgroups(cdir.cluster_id)


class Cluster:
    def __init__(self, data_dir: Path, storage_port: int, compute_port: int) -> None:
        self.data_dir = data_dir
        self.cdir = ClusterDir.at(data_dir)
        self.storage_port, self.compute_port = storage_port, compute_port
        self.up_json: dict = {}

    def cli(self, *args, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(*args, "--data-dir", self.data_dir, input=input, timeout=timeout)

    def ok(self, *args, input: str | None = None) -> subprocess.CompletedProcess:
        result = self.cli(*args, input=input)
        assert result.returncode == 0, f"sixfold {' '.join(map(str, args))}: {result.stdout}\n{result.stderr}"
        return result

    def json(self, *args):
        return json.loads(self.ok(*args, "--json").stdout)

    def state(self) -> dict:
        return json.loads(self.cdir.state_file.read_text())

    def pids(self) -> list[int]:
        state = self.state()
        return [p for p in [state.get("supervisor_pid")] + [n.get("pid") for n in state["nodes"]] if p]

    def status(self) -> dict[str, dict]:
        result = self.cli("status", "--json")
        return {n["name"]: n for n in json.loads(result.stdout)}

    def wait_status(self, predicate, timeout_s: float = 30.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.status()
            if predicate(nodes):
                return nodes
            if time.monotonic() > deadline:
                raise AssertionError(f"status never matched: {json.dumps(nodes, indent=1)}")
            time.sleep(0.3)

    def sql(self, *statements: str, endpoint: str = "writer", timeout_s: float = 10) -> list[dict]:
        args = ["sql", "--json", "--endpoint", endpoint, "--timeout-s", timeout_s]
        for s in statements:
            args += ["-c", s]
        return json.loads(self.ok(*args).stdout)


def all_healthy(nodes: dict[str, dict]) -> bool:
    return all(n["health"] == "ok" for n in nodes.values())


# ---------------------------------------------------------------- fast: no processes


def _walk(group: click.Group, ctx: click.Context, path: list[str]):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from _walk(command, click.Context(command, parent=ctx, info_name=name), [*path, name])


ALL_COMMANDS = list(_walk(cli, click.Context(cli, info_name="sixfold"), []))


def test_command_list_is_complete():
    names = {" ".join(p) for p in ALL_COMMANDS}
    for expected in ("up", "down", "status", "endpoints", "sql", "demo", "settings", "chaos kill", "chaos pause",
                     "chaos resume", "chaos restart", "chaos partition", "chaos heal", "chaos log", "chaos run",
                     "storage-node", "compute-node", "coordinator", "failover", "endpoint create",
                     "endpoint delete", "replica add", "replica remove"):
        assert expected in names


@pytest.mark.parametrize("path", [[]] + ALL_COMMANDS, ids=lambda p: " ".join(p) or "sixfold")
def test_help_everywhere(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("args", [
    ["up", "--bogus"], ["down", "--nope"], ["status", "--jsn"], ["endpoints", "extra"], ["sql", "--timeout-s", "0"],
    ["chaos", "kill", "--az", "x"], ["chaos", "frobnicate"], ["frobnicate"], ["up", "--readers", "many"],
    ["up", "--runtime", "vm"], ["demo", "--phase-s", "0"],
])
def test_bad_flags_exit_2(args, tmp_path):
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)] if args[0] != "demo" else args)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("args, words", [
    (["--azs", "2"], "exactly 3 AZs"),
    (["--storage-per-az", "1"], "at least 2"),
    (["--readers", "16"], "0 to 15"),
    (["--writers", "9"], "1 to 8 writers"),
    (["--regions", "10"], "1 to 9 regions"),
    (["--writers", "2", "--regions", "2"], "secondary regions"),
    (["--runtime", "docker", "--docker-subnet", "10.201.0.0/24"], "give a /16"),
    (["--storage-port", "7000", "--compute-port", "7000"], "must differ"),
])
def test_impossible_topologies_exit_2_and_touch_nothing(args, words, tmp_path):
    data_dir = tmp_path / "never-created"
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(data_dir), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert not data_dir.exists()


def test_env_vars_feed_the_up_flags(tmp_path):
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path / "d")], env={"SIXFOLD_AZS": "2"})
    assert result.exit_code == 2 and "exactly 3 AZs" in result.output


def test_unusable_data_dirs_exit_2(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(a_file)])
    assert result.exit_code == 2 and "is a file" in result.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(busy)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (busy / "precious.txt").read_text() == "keep me"


def test_commands_without_a_cluster(tmp_path):
    runner = CliRunner()
    d = str(tmp_path / "none")
    result = runner.invoke(cli, ["down", "--data-dir", d])
    assert result.exit_code == 0 and "nothing to stop" in result.output
    result = runner.invoke(cli, ["down", "--data-dir", d, "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["was_running"] is False
    for args in (["status"], ["endpoints"], ["sql", "-c", "SELECT 1"], ["chaos", "kill", "--all"]):
        result = runner.invoke(cli, [*args, "--data-dir", d])
        assert result.exit_code == 1, (args, result.output)
        assert "no cluster in" in result.output and "sixfold up" in result.output
    result = runner.invoke(cli, ["chaos", "log", "--json", "--data-dir", d])
    assert result.exit_code == 0 and json.loads(result.output) == []
    assert not Path(d).exists()


def test_settings_json():
    result = CliRunner().invoke(cli, ["settings", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert {"name", "flag", "env", "type", "default", "scope", "help"} <= set(rows[0])
    assert any(r["flag"] == "--storage-per-az" and r["env"] == "SIXFOLD_STORAGE_PER_AZ" for r in rows)


# ---------------------------------------------------------------- slow: a real cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cli") / "cluster"
    storage_port, compute_port = free_ports()
    c = Cluster(data_dir, storage_port, compute_port)
    try:
        result = run("up", "--data-dir", data_dir, "--readers", 1, "--storage-port", storage_port,
                     "--compute-port", compute_port, "--commit-timeout-s", 3, "--json")
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        c.up_json = json.loads(result.stdout)
        yield c
    finally:
        force_teardown(data_dir)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_up_prints_endpoints_and_is_idempotent(cluster):
    up = cluster.up_json
    assert up["started"] is True and up["data_dir"] == str(cluster.cdir.root)
    assert [e["name"] for e in up["endpoints"]] == ["writer", "reader", "writer-1", "reader-1"]
    assert all(ENDPOINT_FIELDS <= set(e) for e in up["endpoints"])
    assert up["endpoints"][0]["address"] == f"127.1.0.200:{cluster.compute_port + 200}"  # the router
    assert len(up["nodes"]) == 11
    supervisor = cluster.state()["supervisor_pid"]
    again = cluster.ok("up")
    assert "already up" in again.stdout
    again_json = cluster.json("up")
    assert again_json["started"] is False
    assert cluster.state()["supervisor_pid"] == supervisor
    other = cluster.cli("up", "--readers", 2)
    assert other.returncode == 2 and "another topology" in other.stderr and "--readers 2" in other.stderr
    assert cluster.state()["supervisor_pid"] == supervisor


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_status_and_endpoints_json(cluster):
    nodes = cluster.json("status")
    assert isinstance(nodes, list) and len(nodes) == 11
    for n in nodes:
        assert STATUS_FIELDS <= set(n), n
        assert n["health"] == "ok" and isinstance(n["pid"], int)
        assert n["address"].startswith(f"127.1.{n['az']}.")
    by_name = {n["name"]: n for n in nodes}
    assert by_name["writer-1"]["role"] == "writer" and by_name["writer-1"]["epoch"] >= 1
    assert by_name["reader-1"]["replica_lag_ms_p50"] is not None
    assert by_name["storage-1-1-1"]["kind"] == "storage" and by_name["storage-1-1-1"]["vdl"] is None
    text = cluster.ok("status").stdout
    assert "storage-1-3-2" in text and "running" in text
    eps = cluster.json("endpoints")
    assert [e["name"] for e in eps] == ["writer", "reader", "writer-1", "reader-1"]
    assert all(ENDPOINT_FIELDS <= set(e) for e in eps)
    assert eps[1]["target"] == "reader-1"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_postgresql_through_the_endpoints(cluster):
    import psycopg
    from psycopg import errors

    eps = {e["name"]: e for e in cluster.json("endpoints")}
    assert eps["writer"]["pg_address"] == f"127.1.0.200:{cluster.compute_port + 1200}"
    assert eps["writer-1"]["pg_address"] == f"127.1.1.100:{cluster.compute_port + 1000}"
    password = (cluster.cdir.root / "pg_password").read_text().strip()
    assert f":{password}@" in eps["writer"]["dsn"] and eps["writer"]["dsn"].startswith("postgresql://sixfold:")
    with psycopg.connect(eps["writer"]["dsn"], autocommit=True, connect_timeout=10) as w:
        w.execute("CREATE TABLE pg_ep (id serial PRIMARY KEY, v text)")
        w.execute("INSERT INTO pg_ep (v) VALUES (%s)", ("through the router",))
    with psycopg.connect(eps["reader"]["dsn"], autocommit=True, connect_timeout=10) as r:
        deadline = time.monotonic() + 10
        while r.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'pg_ep'").fetchone() != (1,):
            assert time.monotonic() < deadline, "the reader never saw the table"
            time.sleep(0.1)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            r.execute("INSERT INTO pg_ep (v) VALUES ('no')")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(eps["writer"]["dsn"].replace(password, "wrong"), connect_timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sql_one_shot_json_and_repl(cluster):
    out = cluster.ok("sql", "-c", "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT, b BLOB)",
                     "-c", "INSERT INTO kv VALUES (1, 'one', x'00ff'), (2, NULL, NULL)", "-c", "SELECT * FROM kv")
    assert "2 rows affected" in out.stdout and "one" in out.stdout and "NULL" in out.stdout
    results = cluster.sql("SELECT k, v, b FROM kv ORDER BY k")
    assert results[0]["columns"] == ["k", "v", "b"]
    assert results[0]["rows"] == [[1, "one", "\\x00ff"], [2, None, None]]
    written = cluster.sql("INSERT INTO kv(v) VALUES ('three')")[0]
    assert written["rowcount"] == 1 and written["commit_lsn"] > 0
    repl = cluster.ok("sql", input="SELECT count(*)\n  AS n FROM kv;\n\\d\nINSERT INTO kv(v) VALUES ('x;y');\n"
                                   "SELECT v FROM kv WHERE v = 'x;y';\n\\q\nSELECT 'not reached';\n")
    assert "x;y" in repl.stdout and "kv" in repl.stdout and "not reached" not in repl.stdout
    repl_json = json.loads(cluster.ok("sql", "--json", input="SELECT 1 AS a; SELECT 2 AS b;\n").stdout)
    assert repl_json[0]["columns"] == ["a"]
    # a failing statement: exit 1, the message says what went wrong; the rest is not run
    bad = cluster.cli("sql", "-c", "SELECT * FROM missing", "-c", "SELECT 1")
    assert bad.returncode == 1 and "no such table" in bad.stderr
    bad_repl = cluster.cli("sql", input="SELECT * FROM missing;\nSELECT 42;\n")
    assert bad_repl.returncode == 1 and "42" in bad_repl.stdout
    # endpoints
    deadline = time.monotonic() + 10
    while cluster.sql("SELECT count(*) FROM kv", endpoint="reader")[0]["rows"] != [[4]]:
        assert time.monotonic() < deadline, "the reader never caught up"
        time.sleep(0.2)
    ro = cluster.cli("sql", "--endpoint", "reader-1", "-c", "INSERT INTO kv(v) VALUES ('no')")
    assert ro.returncode == 1 and "read_only" in ro.stderr
    assert cluster.cli("sql", "--endpoint", "storage-1-1-1", "-c", "SELECT 1").returncode == 2
    nope = cluster.cli("sql", "--endpoint", "nope", "-c", "SELECT 1")
    assert nope.returncode == 2 and "writer, reader, writer-1, reader-1" in nope.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_planned_failover_and_back(cluster):
    cluster.sql("CREATE TABLE planned(id INTEGER PRIMARY KEY)")
    for i in range(1, 21):
        cluster.sql(f"INSERT INTO planned VALUES ({i})")
    moved = cluster.json("failover")
    assert moved["from"] == "writer-1" and moved["to"] == "reader-1" and moved["state"] == "done"
    assert moved["old_writers_reading"] == ["writer-1"]   # it returned once writer-1 served reads again
    # the writer endpoint (the router) reaches the new writer; nothing acknowledged is lost
    assert cluster.sql("INSERT INTO planned VALUES (21)")[0]["commit_lsn"] > 0
    import psycopg

    writer_dsn = next(e["dsn"] for e in cluster.json("endpoints") if e["name"] == "writer")
    with psycopg.connect(writer_dsn, autocommit=True, connect_timeout=20) as c:   # PostgreSQL: the new writer too
        assert c.execute("SELECT count(*) FROM planned").fetchone() == (21,)
    assert cluster.sql("SELECT count(*) FROM planned")[0]["rows"] == [[21]]
    # the old writer steps down and the supervisor brings it back as a reader
    nodes = cluster.wait_status(lambda n: n["reader-1"]["role"] == "writer" and n["writer-1"]["role"] == "reader"
                                and n["writer-1"]["health"] == "ok")
    assert nodes["reader-1"]["epoch"] > 1
    coordinators = [n for n in nodes.values() if n["kind"] == "coordinator"]
    assert sorted(n["role"] for n in coordinators) == ["follower", "follower", "leader"]
    bad = cluster.cli("failover", "--target", "nope")
    assert bad.returncode == 2 and "no instance named" in bad.stderr
    back = cluster.json("failover", "--target", "writer-1")
    assert back["to"] == "writer-1" and back["epoch"] > moved["epoch"] and back["old_writers_reading"] == ["reader-1"]
    cluster.wait_status(lambda n: n["writer-1"]["role"] == "writer" and n["reader-1"]["role"] == "reader"
                        and n["reader-1"]["health"] == "ok")
    assert cluster.sql("SELECT count(*) FROM planned")[0]["rows"] == [[21]]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_usage_errors(cluster):
    for args, words in ((["chaos", "kill"], "no target"), (["chaos", "kill", "--node", "nope"], "no node named nope"),
                        (["chaos", "pause", "--az", "9"], "no AZ 9"), (["chaos", "kill", "--region", "2"], "no region 2"),
                        (["chaos", "partition", "--az", "1", "--from-az", "1"], "")):
        result = cluster.cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert words in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_an_az_while_writes_go_on_through_sql(cluster):
    cluster.sql("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, phase TEXT)")
    cluster.sql("INSERT INTO events(phase) VALUES ('before')")
    killed = cluster.json("chaos", "kill", "--az", "2")
    assert CHAOS_FIELDS <= set(killed)
    assert sorted(killed["done"]) == ["coordinator-1-2", "reader-1", "storage-1-2-1", "storage-1-2-2"]
    assert set(killed["detail"]["pids"]) == set(killed["done"])
    for pid in killed["detail"]["pids"].values():
        assert not procs.alive(pid)
    nodes = cluster.status()
    assert {n for n, s in nodes.items() if s["health"] == "down"} == {"coordinator-1-2", "reader-1", "storage-1-2-1",
                                                                      "storage-1-2-2"}
    for i in range(5):  # writes go on with an AZ down: 4 of 6 copies
        assert cluster.sql(f"INSERT INTO events(phase) VALUES ('az2-down-{i}')")[0]["commit_lsn"] > 0
    # the reader endpoint has no reader left: it falls back to the writer
    assert cluster.sql("SELECT count(*) FROM events", endpoint="reader")[0]["rows"] == [[6]]
    time.sleep(1.0)  # the supervisor must leave chaos-killed nodes down
    assert cluster.status()["storage-1-2-1"]["health"] == "down"
    healed = cluster.json("chaos", "heal")
    assert sorted(healed["detail"]["restarted"]) == ["coordinator-1-2", "reader-1", "storage-1-2-1", "storage-1-2-2"]
    cluster.wait_status(all_healthy)
    assert cluster.sql("SELECT count(*) FROM events")[0]["rows"] == [[6]]
    log = [json.loads(line) for line in cluster.cdir.chaos_log.read_text().splitlines()]
    assert [e["action"] for e in log[-2:]] == ["kill", "heal"]
    assert all(CHAOS_FIELDS <= set(e) for e in log)
    assert log[-2]["ts"].endswith("Z") and log[-2]["unix_s"] <= log[-1]["unix_s"]
    assert json.loads(cluster.ok("chaos", "log", "--json", "--last", "2").stdout) == log[-2:]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_pause_resume_and_restart(cluster):
    paused = cluster.json("chaos", "pause", "--node", "storage-1-3-1")
    pid = paused["detail"]["pids"]["storage-1-3-1"]
    assert procs.paused(pid)
    assert cluster.status()["storage-1-3-1"]["health"] == "paused"
    assert cluster.sql("INSERT INTO events(phase) VALUES ('paused')")[0]["commit_lsn"] > 0
    cluster.ok("chaos", "resume", "--node", "storage-1-3-1")
    assert not procs.paused(pid)
    cluster.wait_status(all_healthy)
    # restart the writer: it runs recovery under a new epoch, and SQL goes on
    before = cluster.status()["writer-1"]
    restarted = cluster.json("chaos", "restart", "--writer")
    assert restarted["done"] == ["writer-1"]
    # the coordinators may fail over to reader-1 while writer-1 restarts (it then comes back as a
    # reader): either way a new epoch, one writer, and SQL through the writer endpoint goes on
    after = cluster.wait_status(lambda n: n["writer-1"]["health"] == "ok" and n["writer-1"]["pid"] != before["pid"]
                                and n["reader-1"]["health"] == "ok"
                                and sorted([n["writer-1"]["role"], n["reader-1"]["role"]]) == ["reader", "writer"])
    assert after["writer-1"]["epoch"] > before["epoch"]
    assert cluster.sql("SELECT count(*) FROM events")[0]["rows"] == [[7]]
    assert cluster.sql("INSERT INTO events(phase) VALUES ('after-restart')")[0]["commit_lsn"] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_supervisor_restarts_a_node_that_dies(cluster):
    victim = cluster.status()["storage-1-1-2"]
    os.kill(victim["pid"], signal.SIGKILL)  # not through chaos: an unexpected crash
    nodes = cluster.wait_status(lambda n: n["storage-1-1-2"]["health"] == "ok"
                                and n["storage-1-1-2"]["pid"] != victim["pid"])
    assert nodes["storage-1-1-2"]["restarts"] == victim["restarts"] + 1
    assert "exited with code -9" in cluster.cdir.supervisor_log.read_text()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_partition_and_heal(cluster):
    reason = partition.unavailable_reason()
    if reason is not None:
        result = cluster.cli("chaos", "partition", "--az", "3")
        assert result.returncode == 2 and "cannot partition" in result.stderr
        pytest.skip(f"partitions are not possible here: {reason}")
    chain = partition.partition_chain_name(cluster.cdir.cluster_id)
    cut = cluster.json("chaos", "partition", "--az", "3")
    assert cut["detail"]["chain"] == chain and cut["detail"]["rules"] > 0
    assert len(partition.rules(cluster.cdir.cluster_id)) == cut["detail"]["rules"]
    nodes = cluster.status()
    assert len(nodes["storage-1-3-1"]["partitioned_from"]) == 8  # 6 storage and compute + 2 coordinators
    # the cut-off coordinator loses the raft leader and, after the router's documented grace
    # (an election must not be an outage), stops serving the shared endpoints
    cluster.wait_status(lambda n: n["coordinator-1-3"]["role"] == "no-leader")
    time.sleep(LEADERLESS_GRACE_S + 0.5)
    assert cluster.sql("INSERT INTO events(phase) VALUES ('az3-cut')")[0]["commit_lsn"] > 0  # 4 of 6
    # one more storage node cut off from the writer: 3 of 6, so the commit cannot be acknowledged
    writer = next(name for name, n in cluster.status().items() if n["role"] == "writer")  # failovers move it
    cluster.ok("chaos", "partition", "--node", "storage-1-2-1", "--from", writer)
    stuck = cluster.cli("sql", "-c", "INSERT INTO events(phase) VALUES ('no-quorum')")
    assert stuck.returncode == 1 and "commit_unknown" in stuck.stderr
    # a writer that answers its health checks but cannot reach a write quorum is lost too: the
    # coordinators promote a reader that can (its recovery fences the old one), before any heal
    cluster.wait_status(lambda n: any(s["role"] == "writer" and name != writer and s["health"] == "ok"
                                              for name, s in n.items()), timeout_s=60)
    assert cluster.sql("INSERT INTO events(phase) VALUES ('isolated-failover')", timeout_s=20)[0]["commit_lsn"] > 0
    healed = cluster.json("chaos", "heal")
    assert healed["detail"]["partition_rules_removed"] > 0
    assert partition.rules(cluster.cdir.cluster_id) == []
    deadline = time.monotonic() + 60
    while True:  # the writer's streams come back once TCP retransmits get through
        result = cluster.cli("sql", "-c", "INSERT INTO events(phase) VALUES ('healed')")
        if result.returncode == 0:
            break
        assert time.monotonic() < deadline, result.stderr
    rows = dict(cluster.sql("SELECT phase, count(*) FROM events GROUP BY phase")[0]["rows"])
    assert rows["az3-cut"] == 1 and rows["isolated-failover"] == 1 and rows["healed"] >= 1
    assert rows.get("no-quorum", 0) <= 1  # its outcome was unknown: there at most once
    cluster.wait_status(all_healthy)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_replica_add_remove_and_custom_endpoints(cluster):
    before = set(cluster.status())
    added = cluster.json("replica", "add", "--az", "3", "--tier", "0")
    assert added["name"] == "reader-2" and added["az"] == 3 and added["tier"] == 0
    nodes = cluster.wait_status(lambda n: "reader-2" in n and n["reader-2"]["health"] == "ok"
                                and n["reader-2"]["role"] == "reader")
    assert nodes["reader-2"]["address"] == added["address"]
    # it follows the writer: it sees what the writer committed
    cluster.sql("CREATE TABLE IF NOT EXISTS replicas(id INTEGER PRIMARY KEY)")
    cluster.sql("INSERT INTO replicas VALUES (1)")
    deadline = time.monotonic() + 10
    while cluster.sql("SELECT count(*) FROM replicas", endpoint="reader-2")[0]["rows"] != [[1]]:
        assert time.monotonic() < deadline, "the added reader never caught up"
        time.sleep(0.2)
    # a custom endpoint over it alone routes only there
    created = cluster.json("endpoint", "create", "reporting", "--type", "reader", "--members", "reader-2")
    assert created["kind"] == "custom" and created["members"] == ["reader-2"]
    eps = {e["name"]: e for e in cluster.json("endpoints")}
    assert eps["reporting"]["address"] == created["address"]
    deadline = time.monotonic() + 10
    while True:   # the catalog marks the new reader healthy after its health checks
        rows = cluster.sql("SELECT count(*) FROM replicas", endpoint="reporting", timeout_s=15)[0]["rows"]
        if rows == [[1]]:
            break
        assert time.monotonic() < deadline
    # and its PostgreSQL twin (reporting-pg) too
    import psycopg

    assert eps["reporting"]["pg_address"] and eps["reporting"]["dsn"].startswith("postgresql://")
    with psycopg.connect(eps["reporting"]["dsn"], autocommit=True, connect_timeout=15) as pg:
        assert pg.execute("SELECT count(*) FROM replicas").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            pg.execute("INSERT INTO replicas VALUES (2)")
    bad = cluster.cli("endpoint", "create", "reporting", "--members", "reader-2")
    assert bad.returncode == 2 and "already exists" in bad.stderr
    bad = cluster.cli("endpoint", "create", "x", "--members", "nope")
    assert bad.returncode == 2 and "no instance named nope" in bad.stderr
    assert cluster.cli("endpoint", "delete", "nope").returncode == 2
    # the writer cannot be removed; the reader can, and leaves its custom endpoint
    writer = next(name for name, n in cluster.status().items() if n["role"] == "writer")
    refused = cluster.cli("replica", "remove", writer)
    assert refused.returncode == 2 and "fail over first" in refused.stderr
    assert cluster.cli("replica", "remove", "storage-1-1-1").returncode == 2
    pid = cluster.status()["reader-2"]["pid"]
    assert cluster.json("replica", "remove", "reader-2") == {"name": "reader-2", "removed": True}
    assert not procs.alive(pid) and set(cluster.status()) == before
    eps = {e["name"]: e for e in cluster.json("endpoints")}
    assert "reader-2" not in eps and eps["reporting"]["members"] == []
    assert cluster.json("endpoint", "delete", "reporting") == {"deleted": "reporting"}
    assert "reporting" not in {e["name"] for e in cluster.json("endpoints")}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_down_leaves_nothing_and_is_idempotent(cluster):
    pids = cluster.pids()
    assert len(pids) == 12  # 6 storage, writer, reader, 3 coordinators, the supervisor
    result = cluster.ok("down")
    assert "stopped the cluster" in result.stdout and "data kept" in result.stdout
    assert not [p for p in pids if procs.alive(p)]
    assert procs.cluster_processes(cluster.cdir.root) == []
    assert not cluster.cdir.supervisor_running()
    if os.geteuid() == 0 and partition.iptables_path():
        assert not partition.marks_installed(cluster.cdir.cluster_id)
    state = cluster.state()
    assert state["state"] == "stopped" and all(n["pid"] is None for n in state["nodes"])
    again = cluster.ok("down")
    assert "not running" in again.stdout
    status = cluster.cli("status", "--json")
    assert status.returncode == 1 and {n["health"] for n in json.loads(status.stdout)} == {"stopped"}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_stale_state_is_explained_and_recovered(cluster):
    cluster.ok("up")  # the stopped cluster comes back with its data and its ports
    assert cluster.state()["spec"]["storage_port"] == cluster.storage_port
    count = cluster.sql("SELECT count(*) FROM events")[0]["rows"][0][0]
    pids = cluster.pids()
    os.kill(cluster.state()["supervisor_pid"], signal.SIGKILL)  # its nodes follow it (parent-death signal)
    assert procs.wait_gone(pids, 10) == []
    status = cluster.cli("status")
    assert status.returncode == 1 and "stale" in status.stdout
    for command in (["sql", "-c", "SELECT 1"], ["chaos", "kill", "--writer"]):
        result = cluster.cli(*command)
        assert result.returncode == 1 and "not running" in result.stderr
    result = cluster.ok("up")
    assert "stale" in result.stderr
    assert cluster.sql("SELECT count(*) FROM events")[0]["rows"] == [[count]]
    cluster.ok("down")
    assert procs.cluster_processes(cluster.cdir.root) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_port_taken_fails_cleanly(tmp_path):
    storage_port, compute_port = free_ports()
    data_dir = tmp_path / "cluster"
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.1.2.2", storage_port))
    holder.listen()
    try:
        result = run("up", "--data-dir", data_dir, "--storage-port", storage_port, "--compute-port", compute_port)
        assert result.returncode == 1
        assert f"127.1.2.2:{storage_port} (storage-1-2-2)" in result.stderr
        assert f"pid {os.getpid()}" in result.stderr and "Nothing was started" in result.stderr
        assert procs.cluster_processes(ClusterDir.at(data_dir).root) == []
        assert not (data_dir / "cluster.json").exists()
    finally:
        holder.close()
        force_teardown(data_dir)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_failed_start_leaves_nothing_running(tmp_path):
    storage_port, compute_port = free_ports()
    data_dir = tmp_path / "cluster"
    broken = data_dir / "nodes" / "storage-1-3-2" / "data"
    broken.parent.mkdir(parents=True)
    broken.write_text("a file where the node's data dir should be")
    try:
        result = run("up", "--data-dir", data_dir, "--storage-port", storage_port, "--compute-port", compute_port)
        assert result.returncode == 1
        assert "storage-1-3-2 exited with code 2" in result.stderr
        assert "not a writable directory" in result.stderr  # the tail of the node's own log
        assert procs.cluster_processes(ClusterDir.at(data_dir).root) == []
        assert json.loads((data_dir / "cluster.json").read_text())["state"] == "failed"
        assert run("status", "--data-dir", data_dir).returncode == 1
    finally:
        force_teardown(data_dir)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_tells_the_story_and_tears_down():
    result = run("demo", "--phase-s", 3, "--json", timeout=170)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout)
    assert [p["name"] for p in report["phases"]] == ["baseline", "az-down", "az-plus-one-down", "healed"]
    assert all(report["checks"].values()), report["checks"]
    assert report["verify"]["acknowledged_missing"] == 0 and report["commits"] > 0
    for key in ("commits", "write_errors", "reads", "read_errors", "replica_lag_ms_p99", "time_without_writes_s"):
        assert key in report
    assert "killed AZ 3" in result.stderr
