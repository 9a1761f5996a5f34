"""Linearizability of single-key registers (read / write / cas), keys checked independently.

Ops: f "read" value [key, v] (v filled in by the completion), f "write" value [key, v],
f "cas" value [key, [old, new]]. A register that was never written reads None.

The search is Wing & Gong's, with Lowe's memoisation (as Knossos and Porcupine do): from a
set of linearized ops and the register's state, any pending op that was invoked before
every other pending op returned may take effect next; (set, state) pairs already seen are
skipped. An op of unknown outcome (info) never returns, so it may take effect at any time
after its invocation, or never. A failed op certainly did not happen and is dropped, as is
an info read (it changes nothing) and an info write or cas whose value no one observed
(leaving it out is always at least as consistent as putting it in).
"""

from __future__ import annotations

from collections import defaultdict

from sixfold.chaos.history import FAIL, INFO, OK, pair

STATES_MAX = 1_000_000   # per key: beyond this the verdict is "unknown", never a guess


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


class _Op:
    __slots__ = ("f", "arg", "start", "end", "required", "index")

    def __init__(self, f, arg, start, end, required, index):
        self.f, self.arg, self.start, self.end, self.required, self.index = f, arg, start, end, required, index

    def step(self, state):
        """(ok, new state)."""
        if self.f == "read":
            return state == self.arg, state
        if self.f == "write":
            return True, self.arg
        old, new = self.arg
        return state == old, new if state == old else state

    def describe(self):
        return {"index": self.index, "f": self.f, "value": self.arg, "required": self.required}


def check(ops: list[dict], initial=None) -> dict:
    per_key: dict = defaultdict(list)
    for c in pair(ops):
        if c.f not in ("read", "write", "cas") or c.type == FAIL:
            continue
        key, arg = c.value[0], _freeze(c.value[1])
        if c.f == "read" and c.type != OK:
            continue
        per_key[_freeze(key)].append((c, arg))
    results = {}
    unknown = []
    for key, items in per_key.items():
        observed = {arg for c, arg in items if c.f == "read"} | {arg[0] for c, arg in items if c.f == "cas"}
        key_ops = []
        for c, arg in items:
            if c.type == INFO and (arg[1] if c.f == "cas" else arg) not in observed:
                continue
            key_ops.append(_Op(c.f, arg, c.start_ns, c.end_ns, c.type == OK, c.invoke["index"]))
        results[key] = _search(key_ops, _freeze(initial))
        if results[key]["valid"] is None:
            unknown.append(key)
    bad = {k: r for k, r in results.items() if r["valid"] is False}
    return {"valid": False if bad else (None if unknown else True),
            "anomaly_types": ["nonlinearizable"] if bad else [],
            "counts": {"nonlinearizable": len(bad)} if bad else {},
            "anomalies": {"nonlinearizable": [{"key": k, **r} for k, r in list(bad.items())[:5]]} if bad else {},
            "unknown_keys": unknown,
            "stats": {"keys": len(results), "ops": sum(len(v) for v in per_key.values()),
                      "states": sum(r["states"] for r in results.values())}}


def _search(ops: list[_Op], initial) -> dict:
    ops = sorted(ops, key=lambda o: o.start)
    n = len(ops)
    required_mask = sum(1 << i for i, o in enumerate(ops) if o.required)
    seen = {(0, initial)}
    stack = [(0, initial)]
    deepest = (0, 0, initial)
    while stack:
        mask, state = stack.pop()
        if mask & required_mask == required_mask:
            return {"valid": True, "states": len(seen)}
        depth = bin(mask).count("1")
        if depth > deepest[0]:
            deepest = (depth, mask, state)
        min_end = min(o.end for i, o in enumerate(ops) if not mask >> i & 1)
        for i, o in enumerate(ops):
            if o.start > min_end:
                break
            if mask >> i & 1:
                continue
            ok, new_state = o.step(state)
            if ok:
                nxt = (mask | 1 << i, new_state)
                if nxt not in seen:
                    if len(seen) >= STATES_MAX:
                        return {"valid": None, "states": len(seen), "why": f"gave up after {STATES_MAX} states"}
                    seen.add(nxt)
                    stack.append(nxt)
    _, mask, state = deepest
    pending = [o for i, o in enumerate(ops) if not mask >> i & 1]
    min_end = min(o.end for o in pending)
    return {"valid": False, "states": len(seen),
            "linearized": bin(mask).count("1"), "state": state,
            "could_not_linearize": [o.describe() for o in pending if o.start <= min_end][:10]}
