"""PG membership changes by quorum sets (sixfold/volume/membership.py): the rules, and a
model of one PG through replacements, driven by hypothesis, on the real PGTracker."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sixfold.nodes.storage.codec import meta_from_json, meta_to_json
from sixfold.nodes.storage.replica import Code, Meta, Rejection, SegmentReplica
from sixfold.volume.membership import (
    Membership,
    MembershipConflict,
    check_change,
    choose_replacement,
    complete_lsn,
    has_read_quorum,
    has_write_quorum,
    newest,
    ready_to_finalise,
    record_sets,
    recorded,
)
from sixfold.volume.quorum import PGTracker

SIX = ("A", "B", "C", "D", "E", "F")
SPARES = ("G", "H", "I")
M0 = Membership(0, SIX)


# ------------------------------------------------------------------ the rules


def test_replace_goes_through_a_transitional_membership_then_the_new_set():
    t = M0.begin_replace("F", "G")
    assert t == Membership(1, SIX, ("A", "B", "C", "D", "E", "G"))
    assert t.transitional and t.joining() == ("G",) and t.leaving() == ("F",)
    assert t.all_members() == SIX + ("G",)
    final = t.finalise()
    assert final == Membership(2, ("A", "B", "C", "D", "E", "G")) and not final.transitional
    with pytest.raises(ValueError):
        t.begin_replace("E", "H")   # one change at a time
    with pytest.raises(ValueError):
        M0.begin_replace("G", "H")  # not a member
    with pytest.raises(ValueError):
        M0.begin_replace("F", "A")  # already a member
    with pytest.raises(ValueError):
        M0.finalise()
    assert t.abort() == Membership(2, SIX)


def test_a_transitional_write_needs_four_of_both_sets():
    t = M0.begin_replace("F", "G")
    assert has_write_quorum(M0, {"A", "B", "C", "F"})
    assert not has_write_quorum(t, {"A", "B", "C", "F"})      # 3 of the new set
    assert has_write_quorum(t, {"A", "B", "C", "D"})
    assert not has_write_quorum(t, {"A", "B", "C", "G"})      # 3 of the old set
    assert has_write_quorum(t, {"A", "B", "C", "F", "G"})
    assert has_read_quorum(t, {"A", "B", "C"}) and not has_read_quorum(t, {"A", "B", "F"})


def test_complete_lsn_is_the_lowest_of_each_sets_fourth_highest():
    t = M0.begin_replace("F", "G")
    scls = {"A": 9, "B": 9, "C": 8, "D": 3, "E": 2, "F": 7, "G": 0}
    assert complete_lsn(M0, scls) == 7
    assert complete_lsn(t, scls) == 3   # the new set has A B C D at 9 9 8 3
    assert complete_lsn(M0, {}) == 0


def test_ready_to_finalise_needs_the_joiner_and_a_write_quorum_of_the_new_set_at_the_catch_up_point():
    t = M0.begin_replace("F", "G")
    assert not ready_to_finalise(M0, {m: 10 for m in SIX}, 5)
    assert not ready_to_finalise(t, {**{m: 10 for m in SIX}, "G": 4}, 5)          # the joiner is behind
    assert ready_to_finalise(t, {"A": 10, "B": 10, "C": 10, "D": 0, "G": 5}, 5)   # A B C G: 4 of the new set
    assert not ready_to_finalise(t, {"A": 10, "B": 10, "C": 4, "D": 0, "G": 5}, 5)


def test_newest_membership_wins_and_one_epoch_means_one_membership():
    t = M0.begin_replace("F", "G")
    assert newest([M0, t, t.finalise(), M0]) == t.finalise()
    assert newest([]) is None
    with pytest.raises(MembershipConflict):
        newest([t, M0.begin_replace("E", "G")])
    assert check_change(None, t) is None and check_change(M0, t) is None and check_change(t, t) is None
    assert "<" in check_change(t.finalise(), t)
    assert "already" in check_change(t, M0.begin_replace("E", "G"))


def test_the_replacement_is_a_healthy_non_member_of_the_same_az_least_loaded_first():
    az_of = {"A": "1", "B": "1", "G": "1", "H": "1", "C": "2", "D": "2", "I": "2", "E": "3", "F": "3"}
    members = ("A", "B", "C", "D", "E", "F")
    assert choose_replacement("A", members, az_of, {"G", "H"}, {"G": 3, "H": 1}) == "H"
    assert choose_replacement("A", members, az_of, {"G", "H"}, {}) == "G"
    assert choose_replacement("A", members, az_of, {"I"}, {}) is None       # another AZ
    assert choose_replacement("E", members, az_of, {"G", "H", "I"}, {}) is None  # AZ 3 has no spare


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_recorded_membership_meets_every_write_quorum_of_both_memberships(data):
    """What recovery relies on: whatever write quorum of the old or the new membership it
    fences, it meets a node that holds the new membership's record."""
    old = M0 if data.draw(st.booleans()) else M0.begin_replace("F", "G")
    new = old.finalise() if old.transitional else old.begin_replace(data.draw(st.sampled_from(SIX)), "G")
    everyone = sorted(set(old.all_members()) | set(new.all_members()))
    holders = set(data.draw(st.lists(st.sampled_from(everyone), unique=True)))
    if not recorded(old, new, holders):
        return
    for group in record_sets(old, new):
        for quorum in itertools.combinations(group, 4):
            assert holders & set(quorum), (old, new, holders, quorum)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(SIX + ("G",)), st.integers(0, 20)), st.sampled_from(SIX))
def test_the_transitional_rule_is_stricter_than_either_set_alone(scls, old):
    t = M0.begin_replace(old, "G")
    assert complete_lsn(t, scls) <= complete_lsn(M0, scls)
    assert complete_lsn(t, scls) <= complete_lsn(Membership(0, t.next_members), scls)


# ------------------------------------------------------------------ a model of one PG


class PGModel:
    """One PG, LSNs 1, 2, ... all in it. Records go to the tracker's members at issue time
    and arrive in any order (or never, at a lost node); gossip copies records between
    members; a replacement starts any time and finalises when `finalise_rule` allows.
    PGCL comes from the real PGTracker under the membership in force."""

    def __init__(self, finalise_rule=ready_to_finalise) -> None:
        self.tracker = PGTracker(0, SIX)
        self.tracker.membership = M0
        self.holdings: dict[str, set[int]] = {}
        self.in_flight: list[tuple[int, str]] = []
        self.next_lsn = 1
        self.catch_up_lsn = 0
        self.lost: set[str] = set()
        self.finalise_rule = finalise_rule
        self.finalised = 0

    @property
    def membership(self) -> Membership:
        return self.tracker.membership

    def scl(self, node: str) -> int:
        held, lsn = self.holdings.get(node, set()), 0
        while lsn + 1 in held:
            lsn += 1
        return lsn

    def receive(self, node: str, lsn: int) -> None:
        self.holdings.setdefault(node, set()).add(lsn)
        self.tracker.on_ack(node, self.scl(node))   # storage pushes SCL moves to the writer

    def step(self, choose) -> None:
        action = choose(["issue", "deliver", "deliver", "gossip", "replace", "finalise", "abort", "lose"])
        m = self.membership
        if action == "issue":
            self.in_flight += [(self.next_lsn, n) for n in self.tracker.members]
            self.next_lsn += 1
        elif action == "deliver" and self.in_flight:
            lsn, node = self.in_flight.pop(choose(range(len(self.in_flight))))
            if node not in self.lost:
                self.receive(node, lsn)
        elif action == "gossip":
            node = choose(m.all_members())
            sources = [n for n in m.all_members() if n not in self.lost and n != node]
            missing = sorted(set().union(*(self.holdings.get(s, set()) for s in sources))
                             - self.holdings.get(node, set()))
            if missing and node not in self.lost:
                self.receive(node, missing[0])   # in order: FetchRecords after the SCL
        elif action == "replace" and not m.transitional:
            spares = [n for n in SPARES if n not in m.members and n not in self.lost]
            if spares:
                t = m.begin_replace(choose(m.members), choose(spares))
                self.tracker.membership = t  # set_membership's effect on one PGTracker
                self.tracker.members = t.all_members()
                self.catch_up_lsn = self.next_lsn - 1
        elif action == "finalise" and m.transitional:
            scls = {n: self.scl(n) for n in m.all_members()}
            if self.finalise_rule(m, scls, self.catch_up_lsn):
                final = m.finalise()
                self.tracker.membership = final
                self.tracker.members = final.all_members()
                self.tracker.scl_by_member = {k: v for k, v in self.tracker.scl_by_member.items()
                                              if k in final.members}
                self.finalised += 1
        elif action == "abort" and m.transitional and set(m.joining()) & self.lost:
            back = m.abort()   # a joiner was lost: back to the current set
            self.tracker.membership = back
            self.tracker.members = back.all_members()
            self.tracker.scl_by_member = {k: v for k, v in self.tracker.scl_by_member.items() if k in back.members}
        elif action == "lose":
            candidates = [n for n in m.all_members() if n not in self.lost]
            if len(self.lost) < 2:  # more would stop writes, not break anything
                self.lost.add(choose(candidates))

    def check(self) -> None:
        """Every LSN the writer counts complete is held by 4 members of one of the current
        quorum sets, so every recovery read (3 of each set) finds it."""
        m = self.membership
        for lsn in range(1, self.tracker.pgcl + 1):
            holders = {n for n, held in self.holdings.items() if lsn in held}
            if not any(len(holders & set(group)) >= 4 for group in m.quorum_sets()):
                raise AssertionError(f"LSN {lsn} (PGCL {self.tracker.pgcl}) is on {sorted(holders)} only; "
                                     f"membership {m}")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_model_no_complete_lsn_is_lost_through_membership_changes(data):
    model = PGModel()
    for _ in range(data.draw(st.integers(10, 120))):
        model.step(lambda options: data.draw(st.sampled_from(list(options))))
        model.check()


def test_model_seeded_runs_finish_changes_and_keep_the_invariant():
    finalised = 0
    for seed in range(300):
        rng = random.Random(seed)
        model = PGModel()
        for _ in range(200):
            model.step(lambda options: rng.choice(list(options)))
            model.check()
        finalised += model.finalised
    assert finalised > 100   # the runs do go through replacements


def test_model_catches_finalising_before_the_new_set_has_caught_up():
    found = None
    for seed in range(300):
        rng = random.Random(seed)
        model = PGModel(finalise_rule=lambda m, scls, lsn: True)
        try:
            for _ in range(200):
                model.step(lambda options: rng.choice(list(options)))
                model.check()
        except AssertionError as exc:
            found = str(exc)
            break
    assert found is not None and "only" in found


# ------------------------------------------------------------------ on the storage replica


def test_replica_adopts_a_membership_change_only_from_the_writer_and_never_goes_back():
    r = SegmentReplica("v", 0)
    assert not isinstance(r.bump_epoch(3, "w", (), SIX), Rejection)
    t = M0.begin_replace("F", "G")
    assert r.change_membership(2, "w", (), t).code is Code.STALE_EPOCH
    assert r.change_membership(3, "other", (), t).code is Code.NOT_EPOCH_OWNER
    changes = r.change_membership(3, "w", (), t)
    assert changes.meta is not None and r.meta.membership_epoch == 1 and r.meta.next_members == t.next_members
    assert r.meta.all_members() == t.all_members()
    assert not isinstance(r.change_membership(3, "w", (), t), Rejection)          # a retry
    assert r.change_membership(3, "w", (), M0.begin_replace("E", "G")).code is Code.INVALID
    assert not isinstance(r.change_membership(3, "w", (), t.finalise()), Rejection)
    assert r.change_membership(3, "w", (), t).code is Code.INVALID                # never back
    # an Append's member list creates a replica; it never changes the membership
    plan = r.check_append(3, "w", (), [], SIX)
    assert plan.meta is None or plan.meta.members == t.next_members


def test_replica_learns_a_higher_membership_from_a_peer_or_the_log():
    r = SegmentReplica("v", 0, Meta(1, "w", (), SIX))
    final = M0.begin_replace("F", "G").finalise()
    r.learn(Meta(1, "w", (), final.members, final.epoch, ()))
    assert r.meta.members == final.members and r.meta.membership_epoch == 2
    r.learn(Meta(1, "w", (), SIX, 0, ()))   # an older peer view changes nothing
    assert r.meta.members == final.members
    meta = Meta(1, "w", (), SIX, 1, final.members)
    assert meta_from_json(meta_to_json(meta, 5, 4)) == (meta, 5, 4)
    assert meta_from_json({"epoch": 1, "owner": "w", "history": [], "members": list(SIX)})[0].membership_epoch == 0
