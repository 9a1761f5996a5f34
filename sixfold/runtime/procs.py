"""Processes and ports on this machine (Linux /proc), for the local runtime.

A pid alone is never trusted: pids are reused. A process belongs to a cluster
when its environment carries `SIXFOLD_LOCAL_CLUSTER=<data dir>`, which the
runtime sets on the supervisor and every node it starts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from pathlib import Path

from sixfold.runtime.layout import CLUSTER_ENV


def pid_state(pid: int | None) -> str | None:
    """The process state letter (R, S, D, T, Z, ...) or None when there is no such process."""
    if not pid or pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may contain spaces: the state follows the last ')'
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int | None) -> bool:
    """Running or stopped, but not a zombie waiting for its parent."""
    return pid_state(pid) not in (None, "Z", "X")


def paused(pid: int | None) -> bool:
    return pid_state(pid) in ("T", "t")


def belongs_to(pid: int | None, cluster_root: Path) -> bool:
    if not alive(pid):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{CLUSTER_ENV}={cluster_root}".encode() in environ.split(b"\0")


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return " ".join(raw.split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def signal_ours(pid: int | None, sig: int, cluster_root: Path) -> bool:
    """Sends `sig` if `pid` is a live process of this cluster; True when sent."""
    if not belongs_to(pid, cluster_root):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Waits until none of `pids` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def cluster_processes(cluster_root: Path) -> list[int]:
    """Every live process on this machine that carries this cluster's marker (slow: scans /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and belongs_to(int(entry), cluster_root):
            found.append(int(entry))
    return sorted(found)


# ---------------------------------------------------------------- ports


def address_usable(host: str) -> bool:
    """Can this machine bind `host` (every 127.x.y.z is local on Linux; not on macOS)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _hex_ipv4(host: str) -> str:
    return "".join(f"{int(octet):02X}" for octet in reversed(host.split(".")))


def port_holder(host: str, port: int) -> str | None:
    """'pid N: command' of the process listening on host:port (or on every address), if it can be found."""
    wanted = {f"{_hex_ipv4(host)}:{port:04X}", f"00000000:{port:04X}"}
    inodes = set()
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[1] in wanted and parts[3] == "0A":  # 0A = LISTEN
                inodes.add(parts[9])
    except OSError:
        return None
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    return f"pid {entry}: {cmdline(int(entry))[:200]}"
            except OSError:
                continue
    return None


def kill_group_leftovers(pids: list[int], cluster_root: Path, timeout_s: float = 5.0) -> list[int]:
    """SIGCONT + SIGKILL every pid of ours that is still alive; returns those that would not die."""
    for pid in pids:
        signal_ours(pid, signal.SIGCONT, cluster_root)
        signal_ours(pid, signal.SIGKILL, cluster_root)
    return wait_gone(pids, timeout_s)
