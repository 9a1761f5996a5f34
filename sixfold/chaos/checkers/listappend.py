"""Serializability of list-append transactions (Elle's idea, our code).

A transaction's value is a list of micro-ops: ["append", key, v] and ["r", key, list|None]
(the completion fills in what the read saw). Every appended value is unique per key, so a
read of a list names the transactions that wrote each element, and the longest read of a
key gives that key's version order (every other read must be a prefix of it).

From that we draw the dependency graph between committed transactions:
  ww  T1 -> T2: T2 appended the element right after T1's in the version order;
  wr  T1 -> T2: T2 read a list whose last element T1 appended;
  rw  T1 -> T2: T1 read a list and T2 appended the element that comes next.
A cycle is an anomaly (Adya): only ww edges G0; ww+wr G1c; exactly one rw G-single;
more rw G2. Without a cycle: G1a (read an element of a failed transaction), G1b (read
an intermediate state of another transaction), incompatible orders, duplicates, and
lost appends (acknowledged, yet missing from the final read of its key).
"""

from __future__ import annotations

from collections import defaultdict

from sixfold.chaos.checkers.graph import Graph, cycle_in, strongly_connected
from sixfold.chaos.history import FAIL, INFO, OK, Completed, pair

EXAMPLES_MAX = 5   # anomalies of one kind reported in full; the rest are counted
G_SINGLE_TRIES_MAX = 500


def _mops(c: Completed) -> list:
    return [list(m) for m in (c.value or [])]


def check(ops: list[dict], final_reads: dict | None = None) -> dict:
    """Returns {"valid": bool, "anomalies": {name: [examples]}, "counts": {...}, "stats": {...}}.

    final_reads: {key: list} read after the run healed; ok appends missing there are lost.
    Without it, the longest read of each key stands in (weaker: a lost suffix goes unseen).
    """
    txns = [c for c in pair(ops) if c.f == "txn"]
    anomalies: dict[str, list] = defaultdict(list)
    writer: dict[tuple, int] = {}           # (key, value) -> txn number
    status: dict[int, str] = {}
    appends_of: dict[int, dict] = {}        # txn -> key -> [values in order]
    for i, t in enumerate(txns):
        status[i] = t.type
        per_key: dict = defaultdict(list)
        for m in _mops(t):
            if m[0] == "append":
                k, v = m[1], m[2]
                if (k, v) in writer:
                    anomalies["duplicate-appends"].append({"key": k, "value": v})
                writer[(k, v)] = i
                per_key[k].append(v)
        appends_of[i] = per_key

    # reads: external (before the txn's own append to that key) from ok txns
    reads: list[tuple[int, object, list]] = []
    for i, t in enumerate(txns):
        if t.type != OK:
            continue
        own = set()
        for m in _mops(t):
            if m[0] == "append":
                own.add(m[1])
            elif m[0] == "r" and m[2] is not None and m[1] not in own:
                reads.append((i, m[1], list(m[2])))
            elif m[0] == "r" and m[2] is not None:
                _check_internal(i, t, m, anomalies)
    for k, lst in (final_reads or {}).items():
        reads.append((-1, k, list(lst)))

    # version orders: the longest read per key; every read a prefix of it
    order: dict = {}
    for _, k, lst in reads:
        if len(lst) != len(set(lst)):
            anomalies["duplicate-elements"].append({"key": k, "read": lst})
        if len(lst) >= len(order.setdefault(k, [])):
            order[k] = lst
    for i, k, lst in reads:
        longest = order[k]
        if longest[:len(lst)] != lst:
            anomalies["incompatible-order"].append({"key": k, "read": lst, "longest": longest, "txn": _ref(txns, i)})

    for i, k, lst in reads:
        for v in lst:
            w = writer.get((k, v))
            if w is None:
                anomalies["garbage-read"].append({"key": k, "value": v, "txn": _ref(txns, i)})
            elif status[w] == FAIL:
                anomalies["G1a"].append({"key": k, "value": v, "reader": _ref(txns, i), "writer": _ref(txns, w)})
        if lst and i != -1:
            w = writer.get((k, lst[-1]))
            if w is not None and w != i and appends_of[w][k][-1] != lst[-1]:
                anomalies["G1b"].append({"key": k, "read": lst, "reader": _ref(txns, i), "writer": _ref(txns, w)})

    # lost appends: acknowledged, not in the final read
    if final_reads is not None:
        for (k, v), w in writer.items():
            if status[w] == OK and v not in set(final_reads.get(k, [])):
                anomalies["lost-append"].append({"key": k, "value": v, "writer": _ref(txns, w)})

    # the graph over committed transactions (ok, or info whose appends were observed)
    observed = {writer[(k, v)] for k, lst in order.items() for v in lst if (k, v) in writer}
    committed = {i for i, s in status.items() if s == OK or (s == INFO and i in observed)}
    g = Graph()
    for k, lst in order.items():
        ws = [writer.get((k, v)) for v in lst]
        for a, b in zip(ws, ws[1:]):
            if a is not None and b is not None and a != b and a in committed and b in committed:
                g.add(a, b, "ww")
    for i, k, lst in reads:
        if i == -1:
            continue
        longest = order[k]
        if lst:
            w = writer.get((k, lst[-1]))
            if w is not None and w != i and w in committed:
                g.add(w, i, "wr")
        if longest[:len(lst)] == lst and len(longest) > len(lst):
            nxt = writer.get((k, longest[len(lst)]))
            if nxt is not None and nxt != i and nxt in committed:
                g.add(i, nxt, "rw")
    # an info txn whose writes no one saw may still have happened; an unobserved one adds no edge

    for scc in strongly_connected(g):
        kind, cycle = classify(g, scc)
        anomalies[kind].append({"cycle": [_ref(txns, n) for n in cycle],
                                "edges": [sorted(g.kinds(a, b)) for a, b in zip(cycle, cycle[1:])]})

    counts = {k: len(v) for k, v in anomalies.items()}
    return {"valid": not anomalies, "anomaly_types": sorted(anomalies), "counts": counts,
            "anomalies": {k: v[:EXAMPLES_MAX] for k, v in anomalies.items()},
            "stats": {"txns": len(txns), "ok": sum(1 for s in status.values() if s == OK),
                      "fail": sum(1 for s in status.values() if s == FAIL),
                      "info": sum(1 for s in status.values() if s == INFO),
                      "keys": len(order), "edges": g.edge_count()}}


def _check_internal(i: int, t: Completed, read_mop: list, anomalies) -> None:
    """A read after the txn's own appends must end with them."""
    k = read_mop[1]
    own = []
    for m in _mops(t):
        if m is read_mop or m == read_mop:
            break
        if m[0] == "append" and m[1] == k:
            own.append(m[2])
    lst = read_mop[2]
    if own and lst[-len(own):] != own:
        anomalies["internal"].append({"key": k, "read": lst, "own_appends": own, "txn": t.invoke["index"]})


def _ref(txns: list[Completed], i: int):
    if i == -1:
        return "final-read"
    t = txns[i]
    return {"index": t.invoke["index"], "process": t.process, "type": t.type, "value": t.value}


def classify(g: Graph, scc: list) -> tuple[str, list]:
    """The most specific anomaly in one strongly connected component, with a cycle showing it."""
    members = set(scc)
    for kind, allowed in (("G0", {"ww"}), ("G1c", {"ww", "wr"})):
        cycle = cycle_in(g, members, allowed)
        if cycle:
            return kind, cycle
    # G-single: one rw edge a -> b closed by a path b ->* a without rw (a bounded number of tries)
    rw_edges = [(a, b) for a in scc for b in g.successors(a) if b in members and "rw" in g.kinds(a, b)]
    for a, b in rw_edges[:G_SINGLE_TRIES_MAX]:
        path = g.path(b, a, members, {"ww", "wr"})
        if path:
            return "G-single", [a] + path
    return "G2", cycle_in(g, members, {"ww", "wr", "rw"})
