"""The history: every operation a chaos run did, as Jepsen-shaped ops in JSON lines.

An op is a dict:
    {"index": 12, "type": "invoke"|"ok"|"fail"|"info", "f": "txn", "process": 3,
     "time_ns": 1234567, "wall_s": 1714000000.123, "value": ..., "error": "...", "endpoint": "writer"}
A client process invokes one op at a time; its next op of another type completes it.
"ok" = happened, "fail" = certainly did not happen, "info" = unknown (timed out, lost
connection, commit_unknown): the op may or may not have taken effect. An invocation
names the endpoint it went to ("writer", "reader", or the instance a pinned client talks
to). Nemesis ops have process "nemesis", type "info", f "start" or "stop".
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
NEMESIS = "nemesis"


class History:
    """A thread-safe, append-only list of ops; optionally streamed to a JSON-lines file."""

    def __init__(self, path: Path | None = None) -> None:
        self.ops: list[dict] = []
        self._lock = threading.Lock()
        self._start_ns = time.monotonic_ns()
        self._file = open(path, "w") if path else None

    def append(self, type_: str, f: str, process, value=None, error: str | None = None,
               endpoint: str | None = None) -> dict:
        with self._lock:
            op = {"index": len(self.ops), "type": type_, "f": f, "process": process,
                  "time_ns": time.monotonic_ns() - self._start_ns, "wall_s": round(time.time(), 6), "value": value}
            if error:
                op["error"] = error
            if endpoint:
                op["endpoint"] = endpoint
            self.ops.append(op)
            if self._file:
                self._file.write(json.dumps(op) + "\n")
                self._file.flush()
            return op

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class Completed:
    """An invocation with its completion (type ok/fail/info; an op never completed is info)."""
    process: object
    f: str
    type: str
    invoke: dict
    complete: dict | None

    @property
    def value(self):
        """The completion's value when there is one (reads fill in what they saw), else the invocation's."""
        if self.complete is not None and self.complete.get("value") is not None:
            return self.complete["value"]
        return self.invoke.get("value")

    @property
    def start_ns(self) -> int:
        return self.invoke["time_ns"]

    @property
    def end_ns(self) -> float:
        """When it returned; an op of unknown outcome may take effect any time after its start."""
        if self.type == INFO or self.complete is None:
            return float("inf")
        return self.complete["time_ns"]


def pair(ops: Iterable[dict]) -> list[Completed]:
    """Client invocations paired with their completions, in invocation order (nemesis ops left out)."""
    out: list[Completed] = []
    open_: dict = {}
    for op in ops:
        if op["process"] == NEMESIS:
            continue
        p = op["process"]
        if op["type"] == INVOKE:
            if p in open_:
                raise ValueError(f"process {p} invoked op {op['index']} before its op {open_[p].invoke['index']} "
                                 "completed")
            c = Completed(p, op["f"], INFO, op, None)
            open_[p] = c
            out.append(c)
        else:
            c = open_.pop(p, None)
            if c is None:
                raise ValueError(f"op {op.get('index')} completes nothing: process {p} had no open invocation")
            c.type, c.complete = op["type"], op
    return out


def nemesis_windows(ops: Iterable[dict]) -> list[dict]:
    """Fault windows: {"fault", "targets", "start_ns", "end_ns"} from nemesis start/stop pairs."""
    windows, open_ = [], {}
    end_ns = 0
    for op in ops:
        end_ns = max(end_ns, op["time_ns"])
        if op["process"] != NEMESIS:
            continue
        v = op.get("value") or {}
        key = v.get("id", v.get("fault"))
        if op["f"] == "start":
            open_[key] = {"fault": v.get("fault"), "targets": v.get("targets", []), "start_ns": op["time_ns"],
                          "end_ns": None}
            windows.append(open_[key])
        elif op["f"] == "stop" and key in open_:
            open_.pop(key)["end_ns"] = op["time_ns"]
    for w in open_.values():
        w["end_ns"] = end_ns
    return windows
