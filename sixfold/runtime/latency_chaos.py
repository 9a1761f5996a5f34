"""`sixfold chaos latency`: change the RPC layer's latency table of a running local cluster.

The nodes re-read <data-dir>/latency.json within latency.RELOAD_INTERVAL_S of a change
(sixfold/client/latency.py); every change is logged in chaos.log like the other faults.
"""

from __future__ import annotations

from sixfold.client import latency
from sixfold.runtime.layout import ClusterDir


def regions_of(state: dict) -> list[int]:
    return sorted({int(n["region"]) for n in state["nodes"]})


def table(cdir: ClusterDir) -> latency.LatencyTable:
    return latency.read_table(cdir.latency_file)


def set_pair(cdir: ClusterDir, from_region: int, to_region: int, ms: int, both_ways: bool = True) -> dict:
    """Override one pair (and its reverse unless `both_ways` is off); returns the chaos log entry."""
    with cdir.cli_locked():
        changed = table(cdir).with_override(from_region, to_region, ms, both_ways)
        latency.write_table(cdir.latency_file, changed)
        return cdir.append_chaos("latency", [], {"from_region": from_region, "to_region": to_region,
                                                  "one_way_ms": ms, "both_ways": both_ways})


def reset_unlocked(cdir: ClusterDir) -> bool:
    """Back to the defaults (the caller holds the CLI lock); True if there were overrides."""
    had = cdir.latency_file.exists()
    cdir.latency_file.unlink(missing_ok=True)
    return had


def reset(cdir: ClusterDir) -> dict:
    with cdir.cli_locked():
        had = reset_unlocked(cdir)
        return cdir.append_chaos("latency", [], {"reset": True, "had_overrides": had})
