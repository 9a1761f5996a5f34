"""The bank invariant: transfers move money between accounts, so every read of all the
accounts sums to the same total, and (when the workload forbids overdrafts) no balance
is ever negative. A read's value is {account: balance}; the final read counts too."""

from __future__ import annotations

from sixfold.chaos.history import FAIL, INFO, OK, pair

EXAMPLES_MAX = 5


def check(ops: list[dict], total: int, accounts: list, allow_negative: bool = False,
          final_read: dict | None = None) -> dict:
    bad: dict[str, list] = {}
    reads = [c for c in pair(ops) if c.f == "read" and c.type == OK]
    transfers = [c for c in pair(ops) if c.f == "transfer"]
    snapshots = [(c.invoke["index"], c.value) for c in reads]
    if final_read is not None:
        snapshots.append(("final-read", final_read))
    expected = {str(a) for a in accounts}
    for where, balances in snapshots:
        balances = {str(k): v for k, v in balances.items()}
        if set(balances) != expected:
            bad.setdefault("wrong-accounts", []).append({"op": where, "accounts": sorted(balances)})
            continue
        s = sum(balances.values())
        if s != total:
            bad.setdefault("wrong-total", []).append({"op": where, "total": s, "expected": total,
                                                      "balances": balances})
        negative = {k: v for k, v in balances.items() if v < 0}
        if negative and not allow_negative:
            bad.setdefault("negative-balance", []).append({"op": where, "negative": negative})
    return {"valid": not bad, "anomaly_types": sorted(bad), "counts": {k: len(v) for k, v in bad.items()},
            "anomalies": {k: v[:EXAMPLES_MAX] for k, v in bad.items()},
            "stats": {"reads": len(reads), "final_read": final_read is not None,
                      "transfers_ok": sum(1 for c in transfers if c.type == OK),
                      "transfers_fail": sum(1 for c in transfers if c.type == FAIL),
                      "transfers_info": sum(1 for c in transfers if c.type == INFO)}}
