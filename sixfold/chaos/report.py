"""The report folder's plot (throughput and latency over time, fault windows shaded) and
summary.txt (verdict, op counts, unavailability windows per fault)."""

from __future__ import annotations

from pathlib import Path

from sixfold.chaos.history import FAIL, INFO, OK, nemesis_windows, pair

GAP_MIN_S = 1.0     # no ok op completed for this long: the service was unavailable


def write(out_dir: Path, ops: list[dict], results: dict) -> str:
    completed = pair(ops)
    windows = nemesis_windows(ops)
    gaps = unavailability(completed, ops)
    text = summary_text(completed, windows, gaps, results)
    (out_dir / "summary.txt").write_text(text)
    plot(out_dir / "plot.png", completed, windows, results)
    return text


def unavailability(completed, ops) -> list[tuple[float, float]]:
    """(start_s, end_s) stretches of at least GAP_MIN_S with no op completing ok."""
    done = sorted(c.complete["time_ns"] / 1e9 for c in completed if c.type == OK)
    invoked = [c.start_ns / 1e9 for c in completed]
    if not invoked:
        return []
    marks = [min(invoked)] + done + [max(op["time_ns"] for op in ops if op["process"] != "nemesis") / 1e9]
    return [(a, b) for a, b in zip(marks, marks[1:]) if b - a >= GAP_MIN_S]


def summary_text(completed, windows, gaps, results) -> str:
    counts = {t: sum(1 for c in completed if c.type == t) for t in (OK, FAIL, INFO)}
    checker = results["checker"]
    lines = [f"sixfold chaos run: {results['workload']['workload']}, nemesis {','.join(results['nemesis'])} "
             f"({results['schedule']}), seed {results['seed']}, {results['time_s']:.0f} s, "
             f"{results['concurrency']} clients",
             f"verdict: {'VALID' if results['valid'] else 'INVALID'}"
             + (f" — {', '.join(f'{k} x{v}' for k, v in checker.get('counts', {}).items())}"
                if not results["valid"] else ""),
             f"ops: {len(completed)} ({counts[OK]} ok, {counts[FAIL]} fail, {counts[INFO]} info)",
             f"recovery after the final heal: {results['recovery_s']} s"
             + (f"; still unhealthy: {', '.join(results['unhealthy_after_heal'])}"
                if results["unhealthy_after_heal"] else ""),
             "", "faults (times in s from the start):"]
    for w in windows:
        start, end = w["start_ns"] / 1e9, w["end_ns"] / 1e9
        after = [(a, b) for a, b in gaps if b >= start and a <= end]    # gaps that overlap the fault
        during = [c for c in completed if start <= c.start_ns / 1e9 <= end]
        unavailable = sum(b - max(a, start) for a, b in after)
        lines.append(f"  {w['fault']:<16} {start:7.2f} - {end:7.2f}  targets {', '.join(w['targets']) or '-'}")
        lines.append(f"  {'':<16} ops invoked: {sum(1 for c in during if c.type == OK)} ok, "
                     f"{sum(1 for c in during if c.type == FAIL)} fail, "
                     f"{sum(1 for c in during if c.type == INFO)} info; unavailable {unavailable:.2f} s"
                     + (" in " + ", ".join(f"{a:.2f}-{b:.2f}" for a, b in after) if after else ""))
    if not windows:
        lines.append("  none")
    lines += ["", "unavailability windows (no ok op for >= 1 s):"]
    lines += [f"  {a:7.2f} - {b:7.2f}  ({b - a:.2f} s)" for a, b in gaps] or ["  none"]
    if results.get("nemesis_errors"):
        lines += ["", "nemesis errors:"] + [f"  {e}" for e in results["nemesis_errors"]]
    if not results["valid"]:
        lines += ["", "anomalies (first examples; verdicts.json has them all):"]
        for kind, examples in checker.get("anomalies", {}).items():
            lines.append(f"  {kind}: {str(examples[:2])[:600]}")
    return "\n".join(lines) + "\n"


def plot(path: Path, completed, windows, results) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    end_s = max([c.complete["time_ns"] / 1e9 for c in completed if c.complete] + [1.0])
    buckets = int(end_s) + 1
    for kind, color in ((OK, "tab:green"), (FAIL, "tab:orange"), (INFO, "tab:red")):
        per_s = [0] * buckets
        for c in completed:
            if c.type == kind and c.complete:
                per_s[int(c.complete["time_ns"] / 1e9)] += 1
        ax_t.step(range(buckets), per_s, where="post", color=color, label=kind)
        xs = [c.start_ns / 1e9 for c in completed if c.type == kind and c.complete]
        ys = [(c.complete["time_ns"] - c.start_ns) / 1e6 for c in completed if c.type == kind and c.complete]
        ax_l.scatter(xs, ys, s=4, color=color, label=kind)
    for ax in (ax_t, ax_l):
        for w in windows:
            ax.axvspan(w["start_ns"] / 1e9, w["end_ns"] / 1e9, color="grey", alpha=0.2)
    for w in windows:
        ax_t.text(w["start_ns"] / 1e9, ax_t.get_ylim()[1] * 0.95, w["fault"], fontsize=7, va="top")
    ax_t.set_ylabel("ops completed / s")
    ax_t.legend(loc="upper right", fontsize=7)
    ax_l.set_ylabel("latency (ms, log)")
    ax_l.set_yscale("log")
    ax_l.set_xlabel("time since start (s); grey: fault windows")
    verdict = "valid" if results["valid"] else "INVALID"
    fig.suptitle(f"{results['workload']['workload']} under {','.join(results['nemesis'])} "
                 f"(seed {results['seed']}): {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
