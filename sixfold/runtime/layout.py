"""The local runtime's data dir: what lives where, and how it is read and written.

    <data-dir>/
      cluster.json        spec, nodes, addresses, pids, state (written atomically; see below)
      supervisor.log      the supervisor's own log (starts, exits, restarts, stops)
      supervisor.lock     flock held by the live supervisor: "is it running" without trusting pids
      cli.lock            flock held by a CLI command that changes the cluster (up/down/chaos)
      chaos.log           JSON lines, one per chaos action (the chaos harness reads it)
      nodes/<name>/
        data/             the storage node's data dir
        node.log          the node's stderr, appended across restarts
        chaos-down        marker: chaos killed this node; the supervisor leaves it down
        chaos-paused      marker: chaos paused this node (SIGSTOP)
        restart-requested marker: the supervisor restarts this node now, then removes it
      partitions.json     the partitions chaos made (iptables holds the truth; see partition.py)

Who writes cluster.json: the CLI creates it (state "starting") before it starts
the supervisor, and writes it again only once the supervisor is gone (after
`down`); in between the supervisor is its only writer. Readers never see a
half-written file (write to a temp file, fsync, rename).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

STATE_FORMAT = 1
STATE_FILE = "cluster.json"
MARKER_DOWN = "chaos-down"
MARKER_PAUSED = "chaos-paused"
MARKER_RESTART = "restart-requested"
MARKERS = (MARKER_DOWN, MARKER_PAUSED, MARKER_RESTART)
CHAOS_LOG = "chaos.log"
SUPERVISOR_LOG = "supervisor.log"
# the environment variable every process of a cluster carries: how `down` recognises
# its own processes (never trust a bare pid: it may have been reused)
CLUSTER_ENV = "SIXFOLD_LOCAL_CLUSTER"

# cluster states
STARTING, RUNNING, FAILED, STOPPING, STOPPED = "starting", "running", "failed", "stopping", "stopped"


@dataclass(frozen=True)
class ClusterDir:
    root: Path

    @classmethod
    def at(cls, path: Path | str) -> "ClusterDir":
        return cls(Path(path).expanduser().absolute())

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def supervisor_log(self) -> Path:
        return self.root / SUPERVISOR_LOG

    @property
    def supervisor_lock(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def cli_lock(self) -> Path:
        return self.root / "cli.lock"

    @property
    def chaos_log(self) -> Path:
        return self.root / CHAOS_LOG

    @property
    def cluster_id(self) -> str:
        """Short, stable id of this data dir (names cgroups and the iptables chain)."""
        return hashlib.sha1(str(self.root).encode()).hexdigest()[:8]

    @property
    def pg_password_file(self) -> Path:
        return self.root / "pg_password"

    def pg_password(self) -> str:
        """The PostgreSQL password of the cluster's user: made at the first `up`, kept (0600) in the data dir."""
        path = self.pg_password_file
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(18))
        return path.read_text().strip()

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    def node_data(self, name: str) -> Path:
        return self.node_dir(name) / "data"

    def node_log(self, name: str) -> Path:
        return self.node_dir(name) / "node.log"

    @property
    def requests_dir(self) -> Path:
        """Changes the CLI asks of the running supervisor (add or remove a node), one JSON file each."""
        return self.root / "requests"

    def post_request(self, request: dict) -> None:
        self.requests_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.requests_dir / f".{os.getpid()}-{time.monotonic_ns()}.tmp"
        tmp.write_text(json.dumps(request))
        tmp.rename(self.requests_dir / f"{time.time_ns()}.json")   # the supervisor sees only whole files

    def marker(self, name: str, kind: str) -> Path:
        return self.node_dir(name) / kind

    def has_marker(self, name: str, kind: str) -> bool:
        return self.marker(name, kind).exists()

    def set_marker(self, name: str, kind: str, detail: str = "") -> None:
        path = self.marker(name, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{time.time():.3f} {detail}\n")

    def clear_marker(self, name: str, kind: str) -> bool:
        try:
            self.marker(name, kind).unlink()
            return True
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------ state

    def read_state(self) -> dict | None:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return None
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(f"{self.state_file} is damaged ({exc}); move it away or run "
                             f"`sixfold down --purge --data-dir {self.root}` to start over") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StateError(f"{self.state_file} has an unknown format; it was written by another "
                             "version of sixfold")
        return state

    def write_state(self, state: dict) -> None:
        assert state.get("format") == STATE_FORMAT and "spec" in state and "nodes" in state
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)

    # ------------------------------------------------------------ chaos log

    def append_chaos(self, action: str, targets: list[str], detail: dict | None = None, ok: bool = True) -> dict:
        """One JSON line per chaos action: when, what, at which nodes, and how it went."""
        now = time.time()
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "unix_s": round(now, 3), "action": action, "targets": targets, "ok": ok, "detail": detail or {},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.chaos_log, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry

    def read_chaos(self) -> list[dict]:
        try:
            lines = self.chaos_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
        return out

    # ------------------------------------------------------------ locks

    def supervisor_running(self) -> bool:
        """True while a supervisor holds supervisor.lock (robust against pid reuse)."""
        try:
            fd = os.open(self.supervisor_lock, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)
        return False

    @contextmanager
    def cli_locked(self, timeout_s: float = 120.0) -> Iterator[None]:
        """Serialises CLI commands that change this cluster (two `up`s at once, `up` during `down`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.cli_lock, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise StateError(f"another sixfold command has been changing the cluster in {self.root} "
                                         f"for over {timeout_s:.0f} s; wait for it or stop it") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)


class StateError(Exception):
    """cluster.json cannot be used as it is."""


def hold_lock(path: Path) -> int | None:
    """Takes an exclusive flock for the caller's lifetime; None if someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.set_inheritable(fd, False)
    return fd


def tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
