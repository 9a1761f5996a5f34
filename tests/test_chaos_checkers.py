"""The chaos checkers on hand-made histories (valid and invalid) and on histories that
hypothesis generates from a simulated serial execution (always valid)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sixfold.chaos.checkers import bank, listappend, register
from sixfold.chaos.checkers.graph import Graph, cycle_in, strongly_connected
from sixfold.chaos.history import History, nemesis_windows, pair


def hist(*events) -> list[dict]:
    """events: (process, type, f, value); time_ns is the position."""
    return [{"index": i, "type": t, "f": f, "process": p, "time_ns": i, "wall_s": 0.0, "value": v}
            for i, (p, t, f, v) in enumerate(events)]


def txn(p, invoke_value, result_value, type_="ok"):
    return [(p, "invoke", "txn", invoke_value), (p, type_, "txn", result_value)]


def serial(*txns) -> list[dict]:
    """Transactions one after another: [(invoke mops, completed mops, type)]."""
    events = []
    for i, (inv, done, *type_) in enumerate(txns):
        events += txn(i % 3, inv, done, type_[0] if type_ else "ok")
    return hist(*events)


A, R = "append", "r"


# ---------------------------------------------------------------- history helpers


def test_pair_matches_invocations_and_leaves_open_ones_info(tmp_path):
    h = History(tmp_path / "h.jsonl")
    h.append("invoke", "txn", 0, [[A, 1, 1]])
    h.append("invoke", "txn", 1, [[A, 1, 2]])
    h.append("ok", "txn", 0, [[A, 1, 1]])
    h.append("info", "start", "nemesis", {"fault": "kill", "id": 0, "targets": ["n1"]})
    h.append("info", "stop", "nemesis", {"fault": "kill", "id": 0, "targets": ["n1"]})
    h.close()
    cs = pair(h.ops)
    assert [(c.process, c.type) for c in cs] == [(0, "ok"), (1, "info")]
    assert cs[1].end_ns == float("inf")
    assert [w["fault"] for w in nemesis_windows(h.ops)] == ["kill"]
    assert (tmp_path / "h.jsonl").read_text().count("\n") == 5


def test_pair_refuses_two_open_ops_in_one_process():
    with pytest.raises(ValueError):
        pair(hist((0, "invoke", "txn", []), (0, "invoke", "txn", [])))


# ---------------------------------------------------------------- graph


def test_tarjan_finds_components_with_cycles_only():
    g = Graph()
    for a, b in [(1, 2), (2, 3), (3, 1), (3, 4), (4, 5), (5, 4), (6, 6), (7, 8)]:
        g.add(a, b, "ww")
    comps = sorted(sorted(c) for c in strongly_connected(g))
    assert comps == [[1, 2, 3], [4, 5], [6]]
    cycle = cycle_in(g, {1, 2, 3}, {"ww"})
    assert cycle[0] == cycle[-1] and len(cycle) == 4


def test_tarjan_is_iterative_on_a_long_cycle():
    g = Graph()
    n = 20_000
    for i in range(n):
        g.add(i, (i + 1) % n, "ww")
    assert [len(c) for c in strongly_connected(g)] == [n]


# ---------------------------------------------------------------- list-append: valid


def test_list_append_serial_history_is_valid():
    h = serial(([[A, "x", 1]], [[A, "x", 1]]),
               ([[R, "x", None], [A, "x", 2]], [[R, "x", [1]], [A, "x", 2]]),
               ([[R, "x", None], [R, "y", None]], [[R, "x", [1, 2]], [R, "y", []]]))
    result = listappend.check(h, final_reads={"x": [1, 2], "y": []})
    assert result["valid"], result
    assert result["stats"]["edges"] == 2   # T1 -ww,wr-> T2 -wr-> T3


def test_list_append_info_txn_may_or_may_not_have_happened():
    h = serial(([[A, "x", 1]], None, "info"), ([[A, "x", 2]], None, "info"), ([[R, "x", None]], [[R, "x", [2]]]))
    assert listappend.check(h, final_reads={"x": [2]})["valid"]


def test_list_append_reads_own_writes():
    h = serial(([[A, "x", 1], [R, "x", None]], [[A, "x", 1], [R, "x", [1]]]))
    assert listappend.check(h, final_reads={"x": [1]})["valid"]


# ---------------------------------------------------------------- list-append: anomalies


def kinds(result) -> set:
    return set(result["anomaly_types"])


def test_g0_write_cycle():
    # T1 appends x1,y2; T2 appends x2,y1 -> x: [1,2] (T1<T2), y: [1,2] (T2<T1)
    h = serial(([[A, "x", 1], [A, "y", 2]], [[A, "x", 1], [A, "y", 2]]),
               ([[A, "x", 2], [A, "y", 1]], [[A, "x", 2], [A, "y", 1]]),
               ([[R, "x", None], [R, "y", None]], [[R, "x", [1, 2]], [R, "y", [1, 2]]]))
    r = listappend.check(h)
    assert kinds(r) == {"G0"}, r
    assert r["anomalies"]["G0"][0]["edges"] == [["ww"], ["ww"]]


def test_g1a_aborted_read():
    h = serial(([[A, "x", 1]], [[A, "x", 1]], "fail"), ([[R, "x", None]], [[R, "x", [1]]]))
    assert "G1a" in kinds(listappend.check(h))


def test_g1b_intermediate_read():
    h = serial(([[A, "x", 1], [A, "x", 2]], [[A, "x", 1], [A, "x", 2]]), ([[R, "x", None]], [[R, "x", [1]]]))
    assert "G1b" in kinds(listappend.check(h))


def test_g1c_circular_information_flow():
    # T1 appends x1 and reads y [2]; T2 appends y2 and reads x [1]: each read the other's write
    h = serial(([[A, "x", 1], [R, "y", None]], [[A, "x", 1], [R, "y", [2]]]),
               ([[A, "y", 2], [R, "x", None]], [[A, "y", 2], [R, "x", [1]]]))
    assert kinds(listappend.check(h)) == {"G1c"}


def test_g_single_read_skew():
    # T1 appends x1,y1. T2 reads x [] but y [1]: T2 -rw-> T1 -wr-> T2
    h = serial(([[A, "x", 1], [A, "y", 1]], [[A, "x", 1], [A, "y", 1]]),
               ([[R, "x", None], [R, "y", None]], [[R, "x", []], [R, "y", [1]]]),
               ([[R, "x", None]], [[R, "x", [1]]]))
    r = listappend.check(h)
    assert kinds(r) == {"G-single"}, r


def test_g2_write_skew():
    # T1 reads x [] appends y1; T2 reads y [] appends x1: two rw edges
    h = serial(([[R, "x", None], [A, "y", 1]], [[R, "x", []], [A, "y", 1]]),
               ([[R, "y", None], [A, "x", 1]], [[R, "y", []], [A, "x", 1]]),
               ([[R, "x", None], [R, "y", None]], [[R, "x", [1]], [R, "y", [1]]]))
    r = listappend.check(h)
    assert kinds(r) == {"G2"}, r
    assert sorted(map(tuple, r["anomalies"]["G2"][0]["edges"])) == [("rw",), ("rw",)]


def test_lost_acknowledged_append():
    h = serial(([[A, "x", 1]], [[A, "x", 1]]), ([[A, "x", 2]], [[A, "x", 2]]))
    r = listappend.check(h, final_reads={"x": [1]})
    assert kinds(r) == {"lost-append"}
    assert r["anomalies"]["lost-append"][0]["value"] == 2


def test_incompatible_orders_and_duplicates():
    h = serial(([[A, "x", 1]], [[A, "x", 1]]), ([[A, "x", 2]], [[A, "x", 2]]),
               ([[R, "x", None]], [[R, "x", [2, 1]]]), ([[R, "x", None]], [[R, "x", [1, 2, 2]]]))
    assert {"incompatible-order", "duplicate-elements"} <= kinds(listappend.check(h))


def test_garbage_read():
    assert "garbage-read" in kinds(listappend.check(serial(([[R, "x", None]], [[R, "x", [9]]]))))


# ---------------------------------------------------------------- list-append: generated valid histories


@st.composite
def serial_list_append(draw):
    """Transactions run one at a time on a dict of lists; times overlap freely (serializability
    has no real-time order); some fail (not applied), some are info (applied or not)."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(1, 40))
    keys = ["k%d" % i for i in range(draw(st.integers(1, 4)))]
    db: dict = {k: [] for k in keys}
    counter = 0
    runs = []
    for _ in range(n):
        mops = []
        for _ in range(rng.randint(1, 4)):
            k = rng.choice(keys)
            if rng.random() < 0.5:
                counter += 1
                mops.append([A, k, counter])
            else:
                mops.append([R, k, None])
        outcome = rng.choice(["ok"] * 6 + ["fail", "info"])
        applied = outcome == "ok" or (outcome == "info" and rng.random() < 0.5)
        scratch = {k: list(v) for k, v in db.items()}
        done = []
        for m in mops:
            if m[0] == A:
                scratch[m[1]].append(m[2])
                done.append(m)
            else:
                done.append([R, m[1], list(scratch[m[1]])])
        if applied:
            db = scratch
        runs.append((mops, done if outcome == "ok" else None, outcome))
    # interleave invocations: up to 3 processes, each txn's invoke/complete around its serial slot
    events = []
    for i, (inv, done, outcome) in enumerate(runs):
        events += [(i, "invoke", "txn", inv), (i, outcome, "txn", done)]
    return hist(*events), db


@settings(max_examples=150, deadline=None)
@given(serial_list_append())
def test_generated_serial_list_append_histories_are_valid(case):
    h, db = case
    r = listappend.check(h, final_reads=db)
    assert r["valid"], r


# ---------------------------------------------------------------- bank


def bank_hist(*reads_and_transfers):
    events = []
    for p, f, v, t in reads_and_transfers:
        events += [(p, "invoke", f, v if f == "transfer" else None), (p, t, f, v)]
    return hist(*events)


def test_bank_valid():
    h = bank_hist((0, "read", {"0": 50, "1": 50}, "ok"),
                  (1, "transfer", {"from": 0, "to": 1, "amount": 10}, "ok"),
                  (0, "read", {"0": 40, "1": 60}, "ok"),
                  (1, "transfer", {"from": 1, "to": 0, "amount": 5}, "info"))
    r = bank.check(h, total=100, accounts=[0, 1], final_read={"0": 45, "1": 55})
    assert r["valid"], r
    assert r["stats"]["transfers_info"] == 1


def test_bank_wrong_total_and_negative():
    h = bank_hist((0, "read", {"0": 50, "1": 40}, "ok"), (0, "read", {"0": -10, "1": 110}, "ok"))
    r = bank.check(h, total=100, accounts=[0, 1])
    assert kinds(r) == {"wrong-total", "negative-balance"}
    assert bank.check(h[2:], total=100, accounts=[0, 1], allow_negative=True)["valid"]


def test_bank_missing_account_and_bad_final_read():
    h = bank_hist((0, "read", {"0": 100}, "ok"))
    r = bank.check(h, total=100, accounts=[0, 1], final_read={"0": 70, "1": 20})
    assert kinds(r) == {"wrong-accounts", "wrong-total"}


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_generated_serial_bank_histories_are_valid(seed, n):
    rng = random.Random(seed)
    balances = {str(a): 20 for a in range(5)}
    events = []
    for i in range(n):
        if rng.random() < 0.4:
            events += [(i, "invoke", "read", None), (i, "ok", "read", dict(balances))]
            continue
        a, b = rng.sample(sorted(balances), 2)
        amount = rng.randint(1, 10)
        outcome = "ok" if balances[a] >= amount else "fail"
        if outcome == "ok" and rng.random() < 0.2:
            outcome = "info"
        if outcome != "fail" and balances[a] >= amount:
            balances[a] -= amount
            balances[b] += amount
        value = {"from": int(a), "to": int(b), "amount": amount}
        events += [(i, "invoke", "transfer", value), (i, outcome, "transfer", value)]
    assert bank.check(hist(*events), total=100, accounts=range(5), final_read=balances)["valid"]


# ---------------------------------------------------------------- register


def test_register_linearizable_with_concurrency():
    h = hist((0, "invoke", "write", ["a", 1]), (1, "invoke", "read", ["a", None]),
             (0, "ok", "write", ["a", 1]), (1, "ok", "read", ["a", 1]),
             (2, "invoke", "cas", ["a", [1, 2]]), (0, "invoke", "read", ["a", None]),
             (0, "ok", "read", ["a", 1]),      # before the cas took effect
             (2, "ok", "cas", ["a", [1, 2]]),
             (0, "invoke", "read", ["a", None]), (0, "ok", "read", ["a", 2]))
    assert register.check(h)["valid"] is True


def test_register_stale_read_is_not_linearizable():
    h = hist((0, "invoke", "write", ["a", 1]), (0, "ok", "write", ["a", 1]),
             (0, "invoke", "write", ["a", 2]), (0, "ok", "write", ["a", 2]),
             (1, "invoke", "read", ["a", None]), (1, "ok", "read", ["a", 1]))
    r = register.check(h)
    assert r["valid"] is False
    assert r["anomalies"]["nonlinearizable"][0]["key"] == "a"


def test_register_lost_write_is_not_linearizable():
    h = hist((0, "invoke", "write", ["a", 1]), (0, "ok", "write", ["a", 1]),
             (1, "invoke", "read", ["a", None]), (1, "ok", "read", ["a", None]))
    assert register.check(h)["valid"] is False


def test_register_info_write_may_take_effect_late_or_never():
    late = hist((0, "invoke", "write", ["a", 1]), (0, "info", "write", ["a", 1]),
                (1, "invoke", "read", ["a", None]), (1, "ok", "read", ["a", None]),
                (1, "invoke", "read", ["a", None]), (1, "ok", "read", ["a", 1]))
    assert register.check(late)["valid"] is True
    never = hist((0, "invoke", "write", ["a", 1]), (0, "info", "write", ["a", 1]),
                 (1, "invoke", "read", ["a", None]), (1, "ok", "read", ["a", None]))
    assert register.check(never)["valid"] is True
    # but once it is seen, it cannot be unseen
    flip = hist((0, "invoke", "write", ["a", 1]), (0, "info", "write", ["a", 1]),
                (1, "invoke", "read", ["a", None]), (1, "ok", "read", ["a", 1]),
                (1, "invoke", "read", ["a", None]), (1, "ok", "read", ["a", None]))
    assert register.check(flip)["valid"] is False


def test_register_failed_cas_is_dropped_and_wrong_cas_is_caught():
    h = hist((0, "invoke", "write", ["a", 1]), (0, "ok", "write", ["a", 1]),
             (0, "invoke", "cas", ["a", [5, 6]]), (0, "fail", "cas", ["a", [5, 6]]),
             (0, "invoke", "read", ["a", None]), (0, "ok", "read", ["a", 1]))
    assert register.check(h)["valid"] is True
    bad = hist((0, "invoke", "write", ["a", 1]), (0, "ok", "write", ["a", 1]),
               (0, "invoke", "cas", ["a", [5, 6]]), (0, "ok", "cas", ["a", [5, 6]]))
    assert register.check(bad)["valid"] is False


def test_register_keys_are_independent():
    h = hist((0, "invoke", "write", ["a", 1]), (0, "ok", "write", ["a", 1]),
             (1, "invoke", "read", ["b", None]), (1, "ok", "read", ["b", None]))
    assert register.check(h)["stats"]["keys"] == 2 and register.check(h)["valid"] is True


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(1, 4))
def test_generated_linearizable_register_histories_are_valid(seed, n, processes):
    """Each op takes effect at one instant inside its [invoke, complete] interval."""
    rng = random.Random(seed)
    state: dict = {}
    events = []    # (time, order, event)
    busy_until = [0.0] * processes
    t = 0.0
    value = 0
    for _ in range(n):
        t += rng.random()
        p = rng.randrange(processes)
        start = max(t, busy_until[p] + 0.01)
        point = start + rng.random()
        end = point + rng.random()
        busy_until[p] = end
        key = rng.choice("ab")
        f = rng.choice(["read", "write", "cas"])
        # effects apply in generation order, so linearization points must increase too
        point = max(point, max((e[0] for e in events if e[2][2] == "point"), default=0) + 1e-6)
        end = max(end, point + 1e-6)
        busy_until[p] = end
        if f == "read":
            inv, done, outcome = [key, None], [key, state.get(key)], "ok"
        elif f == "write":
            value += 1
            state[key] = value
            inv = done = [key, value]
            outcome = "info" if rng.random() < 0.1 else "ok"
        else:
            value += 1
            old = state.get(key) if rng.random() < 0.7 else -1
            inv = done = [key, [old, value]]
            if state.get(key) == old:
                state[key] = value
                outcome = "ok"
            else:
                outcome = "fail"
        events.append((start, 0, (p, "invoke", f, inv)))
        events.append((point, 1, (None, None, "point")))
        events.append((end, 2, (p, outcome, f, done)))
    ordered = [e[2] for e in sorted(events, key=lambda e: (e[0], e[1])) if e[2][2] != "point"]
    assert register.check(hist(*ordered))["valid"] is True
