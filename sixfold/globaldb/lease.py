"""The primary writer's lease from the secondary regions' replicators (DESIGN.md, "Fencing").

A writer of a cluster with secondary regions acknowledges a durable commit only while it holds a
lease from every other region's replicator. It asks each one every `lease_s / 4` (a Status with
`lease_epoch`); a grant is valid for `lease_s` from when the request was *sent*, on this process's
monotonic clock, so a pause (SIGSTOP) only shortens it. A replicator that is stopped grants
nothing, and one that knows a newer epoch refuses. An unplanned failover to region R stops R's
replicator first and promotes only `lease_s` + a margin after it is gone: by then no lease the old
primary holds is valid, so the old primary, cut off or paused, acknowledges nothing after that.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from sixfold.client import latency
from sixfold.client.errors import LeaseLostError
from sixfold.rpc import compute_pb2 as cpb
from sixfold.rpc import compute_pb2_grpc

log = logging.getLogger("sixfold.lease")

RENEWALS_PER_LEASE = 4
RETRY_S = 0.1   # between requests while no lease is held
REQUEST_TIMEOUT_MAX_S = 2.0   # (and lease_s / 2 at most)
LESSORS_POLL_S = 0.5   # how soon a region added to the roles is asked for a lease


class PrimaryLease:
    def __init__(self, lessors: Callable[[], dict[int, str]], lease_s: float, epoch: Callable[[], int],
                 asking: Callable[[], bool], waived: Callable[[], set[int]] = set) -> None:
        self.lessors = lessors      # region -> its replicator's address, now (`region add|remove` change it)
        self.lease_s = lease_s
        self.epoch = epoch          # the writer's volume epoch (a replicator refuses an older one)
        self.asking = asking        # only a writer asks
        self.waived = waived        # regions that cannot be promoted (they need a resync): no lease needed
        self.valid_until: dict[str, float] = {}   # lessor -> monotonic s
        self.refused: dict[str, str] = {}
        self._cond = threading.Condition()
        self._asking_threads: dict[str, threading.Thread] = {}
        self.stop = threading.Event()

    def start(self) -> None:
        self._follow_lessors()
        threading.Thread(target=self._watch_lessors, name="lease-lessors", daemon=True).start()

    def _watch_lessors(self) -> None:
        while not self.stop.wait(LESSORS_POLL_S):
            self._follow_lessors()

    def _follow_lessors(self) -> None:
        """One asking thread per current lessor (a removed region's thread ends by itself)."""
        for lessor in self.lessors().values():
            thread = self._asking_threads.get(lessor)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._renew, args=(lessor,), name=f"lease-{lessor}", daemon=True)
                self._asking_threads[lessor] = thread
                thread.start()

    def required(self) -> list[str]:
        waived = self.waived()
        return [lessor for region, lessor in sorted(self.lessors().items()) if region not in waived]

    def held(self) -> bool:
        """A lease from every required replicator, now (the commit paths' check without waiting)."""
        required = self.required()
        now = time.monotonic()
        with self._cond:
            return all(self.valid_until.get(lessor, 0.0) > now for lessor in required)

    def __call__(self, deadline: float) -> None:
        """The commit gate (ClientSettings.commit_gate): returns once the lease is held, raises at `deadline`."""
        required = self.required()
        with self._cond:
            while True:
                now = time.monotonic()
                if all(self.valid_until.get(lessor, 0.0) > now for lessor in required):
                    return
                if now >= deadline:
                    missing = [lessor for lessor in required if self.valid_until.get(lessor, 0.0) <= now]
                    why = "; ".join(f"{m}: {self.refused.get(m) or 'no answer'}" for m in missing)
                    raise LeaseLostError(f"the commit is durable in this region but not acknowledged: no lease "
                                         f"from the replicator(s) of the other region(s) ({why})")
                self._cond.wait(min(deadline - now, self.lease_s / RENEWALS_PER_LEASE))

    def _renew(self, lessor: str) -> None:
        interval_s = self.lease_s / RENEWALS_PER_LEASE
        channel = latency.sync_channel(lessor, options=[("grpc.enable_retries", 0)])
        stub = compute_pb2_grpc.ComputeStub(channel)
        try:
            while not self.stop.is_set() and lessor in self.lessors().values():
                sent = time.monotonic()
                held = False
                if self.asking():
                    held = self._ask(stub, lessor, sent)
                # without a lease (refused, no answer, or not the writer yet) ask again soon: a
                # newly promoted writer must not wait a whole renewal interval for its first one
                self.stop.wait(max(0.0, sent + (interval_s if held else RETRY_S) - time.monotonic()))
        finally:
            channel.close()

    def _ask(self, stub, lessor: str, sent: float) -> bool:
        try:
            reply = stub.Status(cpb.StatusRequest(lease_epoch=max(1, self.epoch())),
                                timeout=min(self.lease_s / 2, REQUEST_TIMEOUT_MAX_S))
            granted, why = reply.lease_granted, reply.lease_refused or f"{reply.role} grants no lease"
        except grpc.RpcError as exc:
            granted, why = False, exc.code().name
        with self._cond:
            if granted:
                self.valid_until[lessor] = max(self.valid_until.get(lessor, 0.0), sent + self.lease_s)
                self.refused.pop(lessor, None)
                self._cond.notify_all()
            elif self.refused.get(lessor) != why:
                self.refused[lessor] = why
                log.warning("no lease from %s: %s", lessor, why)
        return granted
