"""Write forwarding's routing decisions (pure functions of sixfold/nodes/compute/forwarding.py)."""

from __future__ import annotations

import pytest

from sixfold.nodes.compute import forwarding as F


@pytest.mark.parametrize("sql, kind", [
    ("BEGIN", F.BEGIN), ("begin immediate", F.BEGIN), ("COMMIT", F.COMMIT), ("END", F.COMMIT),
    ("ROLLBACK", F.ROLLBACK), ("rollback;", F.ROLLBACK), ("ROLLBACK TO SAVEPOINT a", F.SAVEPOINT),
    ("rollback transaction to a", F.SAVEPOINT), ("SAVEPOINT a", F.SAVEPOINT), ("RELEASE SAVEPOINT a", F.SAVEPOINT),
    ("  SELECT 1", F.READ), ("WITH x AS (SELECT 1) SELECT * FROM x", F.READ), ("VALUES (1)", F.READ),
    ("INSERT INTO t VALUES (1)", F.WRITE), ("UPDATE t SET v = 1", F.WRITE), ("CREATE TABLE u (a)", F.WRITE),
    ("DELETE FROM t", F.WRITE),
])
def test_statements_are_classified(sql, kind):
    assert F.classify(sql) == kind


def test_a_transaction_on_the_primary_stays_there_and_a_write_moves_a_local_one():
    for kind in (F.BEGIN, F.COMMIT, F.ROLLBACK, F.SAVEPOINT, F.READ, F.WRITE):
        assert F.route(F.REMOTE_TRANSACTION, kind) == F.REMOTE
    assert F.route(F.IDLE, F.WRITE) == F.REMOTE
    assert F.route(F.LOCAL_TRANSACTION, F.WRITE) == F.MOVE
    for state in (F.IDLE, F.LOCAL_TRANSACTION):
        for kind in (F.BEGIN, F.COMMIT, F.ROLLBACK, F.SAVEPOINT, F.READ):
            assert F.route(state, kind) == F.LOCAL


def test_only_a_commit_or_an_autocommit_write_can_have_an_unknown_outcome():
    assert F.outcome_unknown(F.COMMIT, in_transaction=True)
    assert F.outcome_unknown(F.WRITE, in_transaction=False)
    assert not F.outcome_unknown(F.WRITE, in_transaction=True)    # uncommitted: it dies with its session
    assert not F.outcome_unknown(F.READ, in_transaction=True)
    assert not F.outcome_unknown(F.BEGIN, in_transaction=False)


def test_consistency_values_and_the_set_statement():
    assert F.parse_consistency("") == F.parse_consistency(None) == F.parse_consistency("OFF") == F.OFF
    assert F.parse_consistency(" 'Session' ") == F.SESSION
    assert F.parse_consistency("global") == F.GLOBAL
    with pytest.raises(ValueError, match="eventual"):
        F.parse_consistency("strong")
    assert F.consistency_set_in("SET sixfold.replica_read_consistency = 'session';") == "'session'"
    assert F.consistency_set_in("set session sixfold.replica_read_consistency to eventual") == "eventual"
    assert F.consistency_set_in("SET search_path = x") is None
    assert F.consistency_set_in("SELECT 'SET sixfold.replica_read_consistency = 1'") is None


def test_many_rows_go_as_few_multi_row_inserts():
    rows = [(i, f"v{i}") for i in range(25_000)]
    statements = F.multi_row_statements('INSERT INTO t ("a", "b") VALUES (?, ?)', rows)
    assert len(statements) == 2   # 15,000 rows of 2 parameters each at most
    assert sum(len(params) for _, params in statements) == 2 * len(rows)
    first_sql, first_params = statements[0]
    assert first_sql.count("(?, ?)") == len(first_params) // 2 == 15_000
    assert first_params[:4] == [0, "v0", 1, "v1"]
    # another shape: once per row
    assert F.multi_row_statements("UPDATE t SET a = ? WHERE b = ?", [(1, 2), (3, 4)]) == [
        ("UPDATE t SET a = ? WHERE b = ?", [1, 2]), ("UPDATE t SET a = ? WHERE b = ?", [3, 4])]


def test_only_secondary_readers_get_the_forwarding_flags_and_the_primary_coordinators():
    from sixfold.runtime.commands import node_args
    from sixfold.runtime.topology import ClusterSpec, nodes_of

    spec = ClusterSpec(regions=2, readers=1)
    nodes = nodes_of(spec)
    by_name = {n.name: n for n in nodes}
    coordinators_of = {r: [n.address for n in nodes if n.kind == "coordinator" and n.region == r] for r in (1, 2)}
    args = node_args(by_name["reader-2-1"], nodes, spec, {"write_forwarding": True}, "/d")
    assert "--write-forwarding" in args
    # the primary's coordinators first, then its own region's (they name the primary after a region switch)
    assert args[args.index("--primary-coordinators") + 1] == ",".join(coordinators_of[1] + coordinators_of[2])
    for name in ("writer-1", "reader-1"):
        assert "--write-forwarding" not in node_args(by_name[name], nodes, spec, {"write_forwarding": True}, "/d")
    assert "--write-forwarding" not in node_args(by_name["reader-2-1"], nodes, spec, {}, "/d")


def test_the_primary_writer_is_found_through_any_regions_catalog():
    from sixfold.nodes.compute.forwarding import primary_writer_in
    from sixfold.rpc import coordinator_pb2 as copb

    writer = copb.Instance(name="writer-1", address="127.1.1.100:7200")
    # the primary region's own catalog (or a one-region cluster): its writer, by address
    assert primary_writer_in(copb.CatalogResponse(writer="writer-1", instances=[writer])) == "127.1.1.100:7200"
    assert primary_writer_in(copb.CatalogResponse(writer="writer-1", instances=[writer], regions_generation=1,
                                                  region=1, primary_region=1)) == "127.1.1.100:7200"
    # another region's catalog, after a switch: the primary region's writer endpoint
    assert primary_writer_in(copb.CatalogResponse(regions_generation=3, region=1, primary_region=2,
                                                  primary_writer_endpoint="127.2.0.200:7400")) == "127.2.0.200:7400"
    # a role change in progress: nobody takes writes yet (the forwarder asks again)
    assert primary_writer_in(copb.CatalogResponse(writer="writer-1", instances=[writer], regions_generation=2,
                                                  region=1, primary_region=0)) is None
