"""Network partitions between local nodes: iptables DROP rules, told apart by cgroup and conntrack.

Why not source addresses: every node listens on its own loopback address, but a
connection it *opens* leaves from 127.0.0.1 (the kernel picks the source from the
`local 127.0.0.0/8 ... src 127.0.0.1` route, and gRPC cannot bind a client's
source address), so a rule "drop 127.1.1.1 -> 127.1.2.1" would never match. And
a server's replies go to 127.0.0.1 too, whoever the client is.

So, when the supervisor runs as root, it starts each node in a cgroup v2 of its
own (`sixfold/<cluster id>/<node>`) and, before any node starts, installs a chain
`SIXFOLD-<cluster id>` (jumped to from OUTPUT) that stamps every new connection
with its initiator: `-m cgroup --path <node's cgroup> --ctstate NEW -j CONNMARK`
(node number k in bits 16..27 of the connection mark). A partition between node
sets A and B then drops, for each a in A and b in B, both directions of the
connections a opened to b and those b opened to a:

    -m connmark --mark <a> -d <b's host> --dport <b's port> -j DROP   (a's requests)
    -m connmark --mark <a> -s <b's host> --sport <b's port> -j DROP   (b's answers to a)
    ... and the same with a and b swapped

which also stalls connections that were open before the partition. Clients
outside the cluster (the CLI, applications) open unmarked connections and still
reach every node. The DROP rules live in their own chain `SIXFOLD-<id>-P`, so
`heal` flushes exactly this cluster's partitions; `down` removes both chains.

This needs root, the `iptables` command (with the cgroup, conntrack and connmark
matches) and a writable cgroup v2 hierarchy; `unavailable_reason()` says which
is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CGROUP_PARENT = "sixfold"
IPTABLES_TIMEOUT_S = 20
RULES_MAX = 4096  # a bound on what one partition may add


def cgroup2_root() -> Path | None:
    """Mount point of the cgroup v2 hierarchy (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def node_cgroup(cluster_id: str, name: str) -> str:
    """The node's cgroup, relative to the cgroup v2 root (as `iptables -m cgroup --path` wants it)."""
    return f"{CGROUP_PARENT}/{cluster_id}/{name}"


def prepare_node_cgroup(cluster_id: str, name: str) -> Path | None:
    """Creates the node's cgroup; returns its cgroup.procs file, or None where that is not possible."""
    root = cgroup2_root()
    if root is None or os.geteuid() != 0:
        return None
    path = root / node_cgroup(cluster_id, name)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    procs = path / "cgroup.procs"
    return procs if procs.exists() else None


def remove_cgroups(cluster_id: str) -> None:
    root = cgroup2_root()
    if root is None:
        return
    base = root / CGROUP_PARENT / cluster_id
    if not base.is_dir():
        return
    for child in base.iterdir():
        if child.is_dir():
            try:
                child.rmdir()  # only succeeds when the cgroup is empty: never disturbs a live node
            except OSError:
                pass
    for path in (base, base.parent):
        try:
            path.rmdir()
        except OSError:
            pass


def in_node_cgroup(pid: int, cluster_id: str, name: str) -> bool:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    return f"0::/{node_cgroup(cluster_id, name)}" in lines


def iptables_path() -> str | None:
    return shutil.which("iptables") or next(
        (p for p in ("/usr/sbin/iptables", "/sbin/iptables") if os.access(p, os.X_OK)), None)


def unavailable_reason() -> str | None:
    """Why partitions cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return ("partitions need root (they add iptables rules); run the command as root, "
                "or use `sixfold chaos kill|pause` which need no privileges")
    if iptables_path() is None:
        return "partitions need the iptables command, which is not installed (Debian: apt-get install iptables)"
    if cgroup2_root() is None:
        return ("partitions need a cgroup v2 hierarchy to tell nodes apart (on loopback every connection "
                "leaves from 127.0.0.1); none is mounted")
    return None


MARK_SHIFT = 16
MARK_MASK = 0x0FFF0000
NODES_MAX = MARK_MASK >> MARK_SHIFT


def chain_name(cluster_id: str) -> str:
    """The chain that marks connections by initiator (lives as long as the cluster runs)."""
    return f"SIXFOLD-{cluster_id}"


def partition_chain_name(cluster_id: str) -> str:
    """The chain of DROP rules (`heal` flushes it)."""
    return f"SIXFOLD-{cluster_id}-P"


def _mark(node_no: int) -> str:
    assert 1 <= node_no <= NODES_MAX
    return f"{node_no << MARK_SHIFT:#x}/{MARK_MASK:#x}"


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [iptables_path() or "iptables", "-w", "5", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=IPTABLES_TIMEOUT_S)
    if check and result.returncode != 0:
        raise PartitionError(f"`{' '.join(cmd)}` failed: {result.stderr.strip() or result.returncode}")
    return result


class PartitionError(Exception):
    pass


def _chain_exists(chain: str) -> bool:
    if os.geteuid() != 0 or iptables_path() is None:
        return False
    return _iptables("-S", chain, check=False).returncode == 0


def marks_installed(cluster_id: str) -> bool:
    return _chain_exists(chain_name(cluster_id))


def install_marks(cluster_id: str, nodes: list[tuple[int, str]]) -> None:
    """[(node number 1.., name)] -> the marking chain and an empty partition chain, hooked into OUTPUT."""
    if len(nodes) > NODES_MAX:
        raise PartitionError(f"{len(nodes)} nodes; connection marks have room for {NODES_MAX}")
    remove_all(cluster_id)
    chain, drops = chain_name(cluster_id), partition_chain_name(cluster_id)
    _iptables("-N", drops)
    _iptables("-N", chain)
    for node_no, name in nodes:
        _iptables("-A", chain, "-m", "cgroup", "--path", node_cgroup(cluster_id, name), "-m", "conntrack",
                  "--ctstate", "NEW", "-j", "CONNMARK", "--set-xmark", _mark(node_no))
    _iptables("-A", chain, "-j", drops)
    _iptables("-I", "OUTPUT", "1", "-j", chain)


def rules(cluster_id: str) -> list[str]:
    """The DROP rules in force."""
    drops = partition_chain_name(cluster_id)
    if not _chain_exists(drops):
        return []
    return [line for line in _iptables("-S", drops).stdout.splitlines() if line.startswith("-A ")]


Side = list[tuple[int, str, int]]  # (node number, host, port)


def add_partition(cluster_id: str, side_a: Side, side_b: Side) -> int:
    """Drops traffic both ways between side_a and side_b; returns the number of rules added."""
    assert side_a and side_b and not ({n for n, _, _ in side_a} & {n for n, _, _ in side_b})
    if not marks_installed(cluster_id):
        raise PartitionError("this cluster's connection-marking chain is missing (was it started as root?)")
    specs = []
    for a in side_a:
        for b in side_b:
            for (src_no, _, _), (_, host, port) in ((a, b), (b, a)):
                specs.append((src_no, "-d", host, "--dport", port))  # requests to the other side
                specs.append((src_no, "-s", host, "--sport", port))  # the other side's answers
    if len(specs) > RULES_MAX:
        raise PartitionError(f"that partition needs {len(specs)} rules; the limit is {RULES_MAX}")
    drops = partition_chain_name(cluster_id)
    for node_no, direction, host, port_flag, port in specs:
        _iptables("-A", drops, "-m", "connmark", "--mark", _mark(node_no), "-p", "tcp", direction, f"{host}/32",
                  port_flag, str(port), "-j", "DROP")
    return len(specs)


def heal_all(cluster_id: str) -> int:
    """Removes every partition of this cluster (the marks stay); returns the number of rules removed."""
    drops = partition_chain_name(cluster_id)
    if not _chain_exists(drops):
        return 0
    removed = len(rules(cluster_id))
    _iptables("-F", drops)
    return removed


def remove_all(cluster_id: str) -> int:
    """Removes both chains and the jump from OUTPUT (at `down`); returns the partition rules removed."""
    chain, drops = chain_name(cluster_id), partition_chain_name(cluster_id)
    removed = len(rules(cluster_id))
    if _chain_exists(chain):
        for _ in range(16):  # bounded: the jump is inserted once, but be tolerant of duplicates
            if _iptables("-D", "OUTPUT", "-j", chain, check=False).returncode != 0:
                break
        _iptables("-F", chain)
        _iptables("-X", chain)
    if _chain_exists(drops):
        _iptables("-F", drops)
        _iptables("-X", drops)
    return removed
