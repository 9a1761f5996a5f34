"""The region-role decisions (sixfold/globaldb/roles.py): pure, no processes."""

from __future__ import annotations

import pytest

from sixfold.globaldb.roles import (FAILOVER, SWITCHOVER, RegionRoles, RolesReader, compute_plan, failover_allowed,
                                    lease_waived, load_roles, other_secondaries, region_writer, replicator_runs,
                                    resync_problem, rpo_of, save_roles, switch_problem)

STEADY = RegionRoles(primary=1, writer="writer-1", writer_address="127.1.1.100:7200", generation=1)


def test_only_the_steady_primary_promotes_on_its_own():
    assert failover_allowed(STEADY, 1) and not failover_allowed(STEADY, 2)
    switching = STEADY.begin(SWITCHOVER, 2)
    assert switching.generation == 2
    # hazard 1: from the moment the change is recorded, not even the old primary promotes
    assert not failover_allowed(switching, 1) and not failover_allowed(switching, 2)
    done = switching.finish("reader-2-1", "127.2.2.101:7200", "127.2.0.200:7400", {"kind": SWITCHOVER})
    assert (done.primary, done.writer, done.change, done.generation) == (2, "reader-2-1", "", 3)
    assert failover_allowed(done, 2) and not failover_allowed(done, 1)
    assert done.changes == ({"kind": SWITCHOVER},)


def test_replicators_run_in_secondaries_only_and_stop_for_good_when_their_region_is_failed_over_to():
    assert not replicator_runs(STEADY, 1) and replicator_runs(STEADY, 2) and replicator_runs(STEADY, 3)
    assert replicator_runs(STEADY.begin(SWITCHOVER, 2), 2)   # it ships up to the fence
    failing = STEADY.begin(FAILOVER, 2)
    assert not replicator_runs(failing, 2) and replicator_runs(failing, 3)   # no more leases from it
    done = failing.finish("reader-2-1", "a", "e", {}, resync=(1,))
    assert done.needs_resync == (1,)
    assert not replicator_runs(done, 1) and not replicator_runs(done, 2) and replicator_runs(done, 3)


def test_a_resynced_region_joins_ships_owes_no_lease_and_then_is_an_ordinary_secondary():
    failed = STEADY.begin(FAILOVER, 2).finish("reader-2-1", "a", "e", {}, resync=(1,))
    assert lease_waived(failed) == {1} and not replicator_runs(failed, 1)
    joining = failed.join(1)
    assert (joining.needs_resync, joining.joining, joining.generation) == ((), (1,), failed.generation + 1)
    assert replicator_runs(joining, 1) and lease_waived(joining) == {1}
    joined = joining.joined(1)
    assert joined.joining == () and lease_waived(joined) == set() and replicator_runs(joined, 1)
    assert RegionRoles.from_json(joining.to_json()) == joining


def test_a_restarted_instance_asks_its_catalog_only_in_the_steady_primary():
    assert compute_plan(STEADY, "writer-1", 1, "rep-1") == ("writer", "", True)
    assert compute_plan(STEADY, "reader-1", 1, "rep-1") == ("reader", "127.1.1.100:7200", True)
    assert compute_plan(STEADY, "reader-2-1", 2, "rep-2") == ("reader", "rep-2", False)
    # hazard 2: the fenced old writer restarted in the middle of a switchover must not recover region 1
    assert compute_plan(STEADY.begin(SWITCHOVER, 2), "writer-1", 1, "rep-1") == ("reader", "rep-1", False)


def test_the_catalog_writer_of_a_secondary_is_its_replicator():
    assert region_writer(STEADY, 1, "replicator-1") == "writer-1"
    assert region_writer(STEADY, 2, "replicator-2") == "replicator-2"


@pytest.mark.parametrize("roles, regions, to, kind, words", [
    (STEADY, [1], 2, SWITCHOVER, "one region"),
    (STEADY, [1, 2], 3, SWITCHOVER, "no region 3"),
    (STEADY, [1, 2], 1, SWITCHOVER, "already is the primary"),
    (STEADY.begin(FAILOVER, 2), [1, 2], 2, SWITCHOVER, "did not finish"),
    (STEADY.begin(FAILOVER, 2).finish("r", "a", "e", {}, resync=(1,)), [1, 2], 1, SWITCHOVER, "needs a resync"),
    (STEADY.join(2), [1, 2], 2, FAILOVER, "still joining"),
])
def test_impossible_role_changes_say_why(roles, regions, to, kind, words):
    assert words in switch_problem(roles, regions, to, kind)


def test_a_possible_role_change_has_no_problem():
    assert switch_problem(STEADY, [1, 2], 2, FAILOVER) == ""
    assert switch_problem(STEADY, [1, 2, 3], 3, FAILOVER) == ""
    assert other_secondaries(STEADY, [1, 2, 3], 3) == [2]   # it follows (switchover) or is resynced (failover)
    assert "still joining" in switch_problem(STEADY.join(2), [1, 2, 3], 3, SWITCHOVER)   # it may be far behind
    assert switch_problem(STEADY.join(2), [1, 2, 3], 3, FAILOVER) == ""


def test_an_unfinished_change_goes_on_and_one_that_fenced_nothing_is_abandoned():
    switching = STEADY.begin(SWITCHOVER, 2)
    assert switch_problem(switching, [1, 2], 2, SWITCHOVER) == ""        # run again: it goes on
    assert switching.begin(SWITCHOVER, 2) == switching                     # ... with the same record
    assert "did not finish" in switch_problem(switching, [1, 2], 1, SWITCHOVER)
    back = switching.abandon()
    assert back.generation == 3 and failover_allowed(back, 1) and back.primary == 1


def test_rpo_is_what_the_promoted_region_had_not_received():
    rpo = rpo_of(source_vdl=120, region_vdl=100, lag_ms_last=250.0, source_seen_unix_s=1000.0)
    assert rpo["rpo_lsns"] == 20 and rpo["rpo_lag_s"] == 0.25
    assert rpo_of(100, 100, 0.0, 0.0)["rpo_lsns"] == 0


def test_the_roles_file_round_trips_and_is_re_read_when_it_changes(tmp_path):
    path = tmp_path / "regions.json"
    assert load_roles(path, STEADY) == STEADY   # no file: the default
    reader = RolesReader(path, STEADY)
    assert reader.get() == STEADY
    changed = STEADY.begin(FAILOVER, 2).finish("reader-2-1", "a", "e", {"kind": FAILOVER}, resync=(1,))
    save_roles(path, changed)
    assert load_roles(path, STEADY) == changed
    assert reader.get() == changed


FAILED_OVER = STEADY.begin(FAILOVER, 2).finish("reader-2-1", "a", "e", {}, resync=(1,))


@pytest.mark.parametrize("roles, regions, region, words", [
    (FAILED_OVER, [1, 2], 3, "no region 3"),
    (FAILED_OVER, [1, 2], 2, "is the primary"),
    (STEADY, [1, 2], 2, "does not need a resync"),
    (FAILED_OVER.begin(SWITCHOVER, 1), [1, 2], 1, "in progress"),
])
def test_impossible_resyncs_say_why(roles, regions, region, words):
    assert words in resync_problem(roles, regions, region)


def test_a_region_failed_over_from_or_still_joining_can_be_resynced():
    assert resync_problem(FAILED_OVER, [1, 2], 1) == ""
    assert resync_problem(FAILED_OVER.join(1), [1, 2], 1) == ""   # a resync that did not finish goes again
    assert "does not need" in resync_problem(FAILED_OVER.join(1).joined(1), [1, 2], 1, "ok")
    # a secondary cut off for longer than the primary kept its records: its replicator cannot go on
    assert resync_problem(STEADY, [1, 2], 2, "needs-resync") == ""
