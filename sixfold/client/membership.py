"""The writer's side of PG membership changes (decisions in sixfold/volume/membership.py).

Replacing a storage node F by G in one PG, while writes go on:

1. Record the transitional membership (old set, old set with F -> G) with the next
   membership epoch on a write quorum of both sets (ChangeMembership; durable before
   each node answers). Only then does the writer switch its tracker to the
   transitional rule (4/6 of both sets) and start sending new records to G too.
2. G catches up from its peers by gossip (seeded from a peer's page images when the
   peers have collected old records). The writer polls the members' SCLs until every
   joining member and a write quorum of the new set hold the segment up to the tail
   it had at the switch.
3. Record the final membership (the new set) with the next epoch on a write quorum of
   both sets, then switch the tracker to it: F gets nothing more.

If the joining node is itself reported lost, the change is aborted instead: the next
epoch goes back to the old set (safe: what both sets made durable is on the old one),
and the next request starts a fresh change with another node.

A writer that dies in between leaves the transitional membership on the nodes; the
next writer's recovery finds it (highest epoch wins), works under both quorum sets,
and finishes the change when the coordinator asks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc

from sixfold.client.convert import truncations_to_pb
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.membership import Membership, choose_replacement, ready_to_finalise, recorded

if TYPE_CHECKING:
    from sixfold.client.quorum import QuorumClient

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
RECORD_RETRY_S = 0.2
RPC_TIMEOUT_S = 2.0
CATCH_UP_LOG_EVERY_S = 5.0


class MembershipFenced(Exception):
    """A node is at a newer volume epoch: this writer was fenced and must stop changing anything."""


class MembershipChanger:
    """Runs the membership changes of one writer; use from the client's event loop."""

    def __init__(self, client: "QuorumClient") -> None:
        self.client = client
        self.tasks: dict[int, asyncio.Task] = {}        # segment -> the change running on it
        self.catch_up_lsn: dict[int, int] = {}
        self.changes_done = 0
        self.lost: dict[str, set[str]] = {}             # node the coordinator reported lost -> healthy nodes then

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()

    def running(self) -> list[int]:
        return sorted(seg for seg, task in self.tasks.items() if not task.done())

    def replace_node(self, old: str, healthy: set[str]) -> dict:
        """Starts replacing `old` in every PG whose current set holds it (and finishing any
        change left transitional, e.g. by a previous writer). Returns the progress."""
        client = self.client
        if client.fenced or client.closed:
            raise MembershipFenced(client.fenced or "the volume is closed")
        self.lost[old] = set(healthy)
        az_of = self._az_of()
        load = self._load()
        without_candidate = 0
        for segment, pg in sorted(client.tracker.pgs.items()):
            task = self.tasks.get(segment)
            membership = self.membership(segment)
            if membership.transitional and old in membership.joining():
                if task is not None and not task.done():
                    task.cancel()   # the joiner was lost: it can never catch up
                self.tasks[segment] = asyncio.get_running_loop().create_task(
                    self._guarded(segment, "abort", self._abort(segment, membership)),
                    name=f"membership-abort-{segment}")
                continue
            if task is not None and not task.done():
                continue
            if membership.transitional:
                self._start(segment, membership, None, None)
            elif old in membership.members:
                new = choose_replacement(old, membership.members, az_of, healthy, load)
                if new is None:
                    without_candidate += 1
                    continue
                load[new] = load.get(new, 0) + 1
                self._start(segment, membership, old, new)
        holding = sum(1 for seg in client.tracker.pgs if old in self.membership(seg).members)
        return {"pgs_holding": holding, "pgs_changing": len(self.running()),
                "pgs_without_candidate": without_candidate}

    def initial_members(self, placed: tuple[str, ...]) -> tuple[str, ...]:
        """A new PG's starting membership: the placement, with nodes the coordinator reported
        lost swapped for healthy ones of their AZ (its members record it; recovery reads it)."""
        if not self.lost or not set(placed) & set(self.lost):
            return placed
        members = list(placed)
        az_of, load = self._az_of(), self._load()
        for i, member in enumerate(placed):
            if member in self.lost:
                new = choose_replacement(member, tuple(members), az_of, self.lost[member], load)
                if new is not None:
                    members[i] = new
                    load[new] = load.get(new, 0) + 1
        return tuple(members)

    def _az_of(self) -> dict[str, str]:
        return {n.address: n.az for n in self.client.nodes}

    def _load(self) -> dict[str, int]:
        load: dict[str, int] = {}
        for pg in self.client.tracker.pgs.values():
            for member in pg.members:
                load[member] = load.get(member, 0) + 1
        return load

    def membership(self, segment: int) -> Membership:
        pg = self.client.tracker.pg(segment)
        return pg.membership or Membership(0, pg.members)

    def _start(self, segment: int, membership: Membership, old: str | None, new: str | None) -> None:
        task = asyncio.get_running_loop().create_task(
            self._guarded(segment, "change", self._change(segment, membership, old, new)),
            name=f"membership-{segment}")
        self.tasks[segment] = task

    async def _change(self, segment: int, membership: Membership, old: str | None, new: str | None) -> None:
        started = time.monotonic()
        if not membership.transitional:
            transitional = membership.begin_replace(old, new)
            log.warning("segment %d: replacing %s by %s (membership %d -> %d)", segment, old, new,
                        membership.epoch, transitional.epoch)
            await self._switch(segment, membership, transitional)
            membership = transitional
        catch_up_lsn = self.catch_up_lsn.setdefault(segment, self.client.tracker.segment_tail(segment))
        await self._wait_caught_up(segment, membership, catch_up_lsn)
        final = membership.finalise()
        await self._switch(segment, membership, final)
        self.changes_done += 1
        log.warning("segment %d: membership %d is %s; %s left (%.1f s)", segment, final.epoch,
                    list(final.members), list(membership.leaving()), time.monotonic() - started)

    async def _abort(self, segment: int, membership: Membership) -> None:
        back = membership.abort()
        log.warning("segment %d: %s was lost while joining: back to membership %d %s", segment,
                    list(membership.joining()), back.epoch, list(back.members))
        await self._switch(segment, membership, back)

    async def _switch(self, segment: int, old: Membership, new: Membership) -> None:
        """Records `new` durably, then puts it in effect in the tracker."""
        await self._record(segment, old, new)
        with self.client._cond:
            self.client.tracker.set_membership(segment, new)
            if new.transitional:
                # records issued from now on go to the new member too and need both quorums;
                # what was issued before is at or below this tail and must reach the new set
                self.catch_up_lsn[segment] = self.client.tracker.segment_tail(segment)
            else:
                self.catch_up_lsn.pop(segment, None)

    async def _guarded(self, segment: int, what: str, change) -> None:
        try:
            await change
        except MembershipFenced as exc:
            log.error("segment %d: membership %s stopped: %s", segment, what, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("segment %d: membership %s failed (the coordinator asks again)", segment, what)

    async def _record(self, segment: int, old: Membership, new: Membership) -> None:
        """ChangeMembership on every node of both memberships until a write quorum of every
        quorum set of both has it durably (sixfold/volume/membership.py: record_sets)."""
        client = self.client
        targets = tuple(dict.fromkeys(old.all_members() + new.all_members()))
        done: set[str] = set()
        while not recorded(old, new, done):
            self._check_open()
            request = pb.ChangeMembershipRequest(
                volume_id=client.settings.volume_id, segment=segment, volume_epoch=client.epoch,
                owner=client.writer_id, membership_epoch=new.epoch, members=list(new.members),
                next_members=list(new.next_members), truncations=truncations_to_pb(client.history),
            )
            missing = [m for m in targets if m not in done]
            replies = await asyncio.gather(*(self._rpc(m, "ChangeMembership", request) for m in missing))
            for member, reply in zip(missing, replies):
                if reply is None:
                    continue
                if reply.error in (pb.STALE_EPOCH, pb.NOT_EPOCH_OWNER):
                    raise MembershipFenced(f"{member}: {reply.detail}")
                if reply.error == pb.OK:
                    done.add(member)
                else:
                    log.warning("segment %d: %s refused membership %d: %s %s", segment, member, new.epoch,
                                pb.ErrorCode.Name(reply.error), reply.detail)
            if not recorded(old, new, done):
                await asyncio.sleep(RECORD_RETRY_S)

    async def _wait_caught_up(self, segment: int, membership: Membership, catch_up_lsn: int) -> None:
        client = self.client
        request = pb.SegmentStateRequest(volume_id=client.settings.volume_id, segments=[segment])
        members = membership.all_members()
        next_log = time.monotonic() + CATCH_UP_LOG_EVERY_S
        while True:
            self._check_open()
            replies = await asyncio.gather(*(self._rpc(m, "GetSegmentState", request) for m in members))
            scls: dict[str, int] = {}
            for member, reply in zip(members, replies):
                for state in reply.segments if reply is not None else ():
                    if state.volume_epoch > client.epoch:
                        raise MembershipFenced(f"{member} is at epoch {state.volume_epoch}")
                    if state.volume_epoch == client.epoch and state.epoch_owner == client.writer_id:
                        scls[member] = state.scl   # durable, at our epoch: what an ack would say
            if ready_to_finalise(membership, scls, catch_up_lsn):
                return
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + CATCH_UP_LOG_EVERY_S
                log.info("segment %d: waiting for %s to catch up to LSN %d (SCLs %s)", segment,
                         list(membership.joining()), catch_up_lsn, scls)
            await asyncio.sleep(POLL_INTERVAL_S)

    def _check_open(self) -> None:
        if self.client.fenced or self.client.closed:
            raise MembershipFenced(self.client.fenced or "the volume was closed")

    async def _rpc(self, member: str, method: str, request):
        try:
            return await getattr(self.client.pool.stub(member), method)(request, timeout=RPC_TIMEOUT_S)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError):
            return None
