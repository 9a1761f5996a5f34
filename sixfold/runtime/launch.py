"""Starts one node for the supervisor: `python -m sixfold.runtime.launch [opts] -- CMD...`.

Three things that must happen in the child between fork and exec, done here so
that the supervisor (which has gRPC threads) never runs Python code in a forked
child:

- the parent-death signal: if the supervisor dies (even by SIGKILL) its nodes
  get SIGKILL too, so a crashed supervisor never leaves orphans serving on the
  cluster's addresses;
- joining the node's cgroup (when running as root), which is how partitions
  tell nodes apart (see partition.py);
- then exec: the node keeps this pid, so the supervisor's pid is the node's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 70


def main(argv: list[str]) -> None:
    parent_pid = None
    cgroup_procs = None
    while argv and argv[0] != "--":
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--parent":
            parent_pid = int(value)
        elif flag == "--cgroup-procs":
            cgroup_procs = value
        else:
            sys.exit(f"launch: unknown option {flag}")
    command = argv[1:]
    if not command:
        sys.exit("launch: no command after --")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"launch: prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    if parent_pid is not None and os.getppid() != parent_pid:
        sys.exit(EXIT_PARENT_GONE)  # the supervisor died before we could ask to follow it
    if cgroup_procs:
        try:
            with open(cgroup_procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            print(f"launch: could not join {cgroup_procs}: {exc} (partitions will not reach this node)",
                  file=sys.stderr)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
