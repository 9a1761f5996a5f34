"""The recovery protocol's I/O shell (decisions in sixfold/volume/recovery.py).

Fence with a new epoch on a write quorum of every PG, read a read quorum,
re-replicate what survives, truncate the rest, and hand back the point from
which the new writer issues LSNs. The truncation carries the baseline: the
records kept in (baseline, VDL] are re-stamped on a write quorum before it is
written, so replicas drop older copies there (sixfold/volume/epochs.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from sixfold.client.channels import ChannelPool
from sixfold.client.convert import member_state, truncations_to_pb
from sixfold.client.errors import RecoveryError
from sixfold.rpc import storage_pb2 as pb
from sixfold.volume import recovery as decide
from sixfold.volume.epochs import Truncation, merge_histories
from sixfold.volume.membership import Membership, has_read_quorum, has_write_quorum
from sixfold.volume.placement import StorageNodeInfo, place_segment
from sixfold.volume.quorum import READ_QUORUM, WRITE_QUORUM
from sixfold.volume.records import decode_records, encode_records

log = logging.getLogger(__name__)

FETCH_MAX_RECORDS = 2000
FETCH_MAX_BYTES = 8 * 1024 * 1024
PARALLEL_SEGMENTS_MAX = 32
MEMBERSHIP_ROUNDS_MAX = 4


@dataclass(frozen=True)
class RecoveredVolume:
    epoch: int
    vdl: int
    baseline: int
    history: tuple[Truncation, ...]
    segment_tails: dict[int, int]
    segment_memberships: dict[int, Membership]
    discarded_lsns: int
    duration_s: float


async def _call(coro, timeout_s: float):
    """An RPC that may fail: returns the response or None (the node counts as absent)."""
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
        log.debug("rpc failed: %s", exc)
        return None


async def discover_segments(pool: ChannelPool, volume_id: str, nodes: list[StorageNodeInfo], timeout_s: float):
    """Every segment any reachable node holds, with each node's view of it."""
    replies = await asyncio.gather(*(
        _call(pool.stub(n.address).GetSegmentState(pb.SegmentStateRequest(volume_id=volume_id), timeout=timeout_s), timeout_s)
        for n in nodes
    ))
    reachable = [n for n, r in zip(nodes, replies) if r is not None]
    states: dict[int, list[decide.MemberState]] = {}
    for node, reply in zip(nodes, replies):
        if reply is None:
            continue
        for state in reply.segments:
            states.setdefault(state.segment, []).append(member_state(node.address, state))
    return reachable, states


async def recover_volume(
    pool: ChannelPool,
    volume_id: str,
    nodes: list[StorageNodeInfo],
    owner: str,
    rpc_timeout_s: float = 2.0,
    repair_timeout_s: float = 15.0,
    min_epoch: int = 0,
) -> RecoveredVolume:
    started = time.monotonic()
    reachable, seen = await discover_segments(pool, volume_id, nodes, rpc_timeout_s)
    if len(reachable) < WRITE_QUORUM:
        raise RecoveryError(
            f"only {len(reachable)} of {len(nodes)} storage nodes answered; recovery needs a write quorum "
            f"({WRITE_QUORUM} of 6) in every PG. Start the missing nodes and retry."
        )
    all_states = [s for states in seen.values() for s in states]
    # min_epoch: a region switchover fenced another region's copy of the volume at min_epoch - 1
    epoch = max(decide.choose_epoch(all_states), min_epoch)
    history = merge_histories(decide.merged_history(all_states))
    segments = sorted(seen)
    # the membership with the highest epoch any replica reports; the placement is only the start
    memberships = {
        seg: decide.current_membership(seen[seg], Membership(0, tuple(n.address for n in place_segment(seg, nodes))))
        for seg in segments
    }
    log.info("recovery: %d segment(s), new epoch %d", len(segments), epoch)
    gate = asyncio.Semaphore(PARALLEL_SEGMENTS_MAX)

    async def fence(seg: int) -> list[decide.MemberState]:
        # A fenced write quorum meets every quorum a newer membership was recorded on
        # (sixfold/volume/membership.py): when the replies name one, fence again under it.
        for _ in range(MEMBERSHIP_ROUNDS_MAX):
            fenced = await fence_once(seg, memberships[seg])
            newer = decide.current_membership(fenced, memberships[seg])
            if newer.epoch == memberships[seg].epoch:
                return fenced
            log.info("recovery: segment %d has membership %d, not %d: fencing again", seg, newer.epoch,
                     memberships[seg].epoch)
            memberships[seg] = newer
        raise RecoveryError(f"segment {seg}: its membership kept changing during recovery; retry")

    async def fence_once(seg: int, membership: Membership) -> list[decide.MemberState]:
        members = membership.all_members()
        async with gate:
            request = pb.BumpEpochRequest(
                volume_id=volume_id, segment=seg, new_epoch=epoch, owner=owner,
                truncations=truncations_to_pb(history), members=list(membership.members),
            )
            replies = await asyncio.gather(*(
                _call(pool.stub(m).BumpEpoch(request, timeout=rpc_timeout_s), rpc_timeout_s) for m in members
            ))
        fenced: list[decide.MemberState] = []
        for member, reply in zip(members, replies):
            if reply is None:
                continue
            if reply.error == pb.STALE_EPOCH:
                raise RecoveryError(
                    f"segment {seg}: member {member} is already at epoch {reply.state.volume_epoch} >= {epoch}; "
                    "another recovery is running. Retry after it finishes."
                )
            if reply.error == pb.OK:
                fenced.append(member_state(member, reply.state))
        if not has_write_quorum(membership, {s.member for s in fenced}):
            raise RecoveryError(
                f"segment {seg}: only {len(fenced)} of {len(members)} members accepted epoch {epoch} "
                f"(need {WRITE_QUORUM} of 6{' in both quorum sets' if membership.transitional else ''}); "
                f"unreachable: {sorted(set(members) - {s.member for s in fenced})}"
            )
        return fenced

    fenced_by_seg = dict(zip(segments, await asyncio.gather(*(fence(s) for s in segments))))
    fenced_states = [s for states in fenced_by_seg.values() for s in states]
    history = merge_histories(history, decide.merged_history(fenced_states))
    baseline = decide.baseline_lsn(fenced_states)

    async def fetch(seg: int, member: str) -> list | None:
        records = []
        after = baseline
        while True:
            reply = await _call(pool.stub(member).FetchRecords(pb.FetchRecordsRequest(
                volume_id=volume_id, segment=seg, after_lsn=after,
                max_records=FETCH_MAX_RECORDS, max_bytes=FETCH_MAX_BYTES,
            ), timeout=rpc_timeout_s), rpc_timeout_s)
            if reply is None or reply.error != pb.OK:
                return None
            batch = decode_records(reply.records)
            records.extend(batch)
            if not reply.has_more or not batch:
                return records
            after = batch[-1].lsn

    async def read_segment(seg: int) -> tuple[list, list[int]]:
        async with gate:
            fetched = await asyncio.gather(*(fetch(seg, s.member) for s in fenced_by_seg[seg]))
        answered = [r for r in fetched if r is not None]
        readers = {s.member for s, r in zip(fenced_by_seg[seg], fetched) if r is not None}
        if not has_read_quorum(memberships[seg], readers):
            raise RecoveryError(f"segment {seg}: only {len(answered)} members answered the read (need {READ_QUORUM} "
                                f"of 6{' in both quorum sets' if memberships[seg].transitional else ''})")
        return decide.newest_copies([r for records in answered for r in records]), [s.scl for s in fenced_by_seg[seg]]

    reads = dict(zip(segments, await asyncio.gather(*(read_segment(s) for s in segments))))
    point = decide.compute_recovery_point(
        baseline,
        {seg: recs for seg, (recs, _) in reads.items()},
        {seg: scls for seg, (_, scls) in reads.items()},
        epoch,
    )
    log.info("recovery: baseline %d, VCL %d, VDL %d, %d record(s) discarded",
             point.baseline, point.vcl, point.vdl, point.discarded_lsns)

    async def repair(seg: int) -> None:
        records = point.repair.get(seg, ())
        request = None
        if records:
            request = pb.AppendRequest(
                batch_seq=1, volume_id=volume_id, volume_epoch=epoch, writer_id=owner,
                vdl_hint=baseline, truncations=truncations_to_pb(history),
                segments=[pb.SegmentAppend(segment=seg, records=encode_records(list(records)),
                                           members=list(memberships[seg].members))],
            )
        await _repair_segment(pool, volume_id, seg, memberships[seg], request, epoch, owner,
                              point.segment_tails.get(seg, 0), rpc_timeout_s, repair_timeout_s, gate)

    await asyncio.gather(*(repair(s) for s in segments))

    async def truncate(seg: int) -> None:
        async with gate:
            request = pb.TruncateRequest(volume_id=volume_id, segment=seg, epoch=epoch, owner=owner,
                                         start_lsn=point.vdl, baseline_lsn=point.baseline)
            members = memberships[seg].all_members()
            replies = await asyncio.gather(*(
                _call(pool.stub(m).Truncate(request, timeout=rpc_timeout_s), rpc_timeout_s) for m in members
            ))
        done = {m for m, r in zip(members, replies) if r is not None and r.error == pb.OK}
        if not has_write_quorum(memberships[seg], done):
            raise RecoveryError(f"segment {seg}: truncation reached {len(done)} of {len(members)} members "
                                f"(need {WRITE_QUORUM} of 6 in each quorum set)")

    await asyncio.gather(*(truncate(s) for s in segments))
    # (baseline, VDL] is re-stamped with our epoch on a write quorum: older copies there are stale
    history = merge_histories(history, (Truncation(epoch, point.vdl, point.baseline),))
    return RecoveredVolume(
        epoch=epoch, vdl=point.vdl, baseline=baseline, history=history,
        segment_tails=point.segment_tails, segment_memberships=memberships,
        discarded_lsns=point.discarded_lsns, duration_s=time.monotonic() - started,
    )


async def _append_once(pool: ChannelPool, member: str, request: pb.AppendRequest, timeout_s: float) -> int | None:
    """One Append of one batch; the ack's error code, or None when the member did not answer."""
    call = pool.stub(member).Append(timeout=timeout_s)
    try:
        await call.write(request)
        await call.done_writing()
        async for ack in call:
            return ack.error
        return None
    except (grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.InvalidStateError):
        return None
    finally:
        call.cancel()


async def _repair_segment(pool, volume_id, seg, membership: Membership, request, epoch, owner, tail,
                          rpc_timeout_s, timeout_s, gate) -> None:
    """Until a write quorum of members holds this recovery's copies up to the tail.

    A member counts only once *our* repair Append was acknowledged by it and it is
    still at our epoch with SCL >= tail: an older copy of a record it held before
    (not re-stamped) or SCL made by a newer writer must not count (see
    sixfold/volume/recovery.py)."""
    deadline = time.monotonic() + timeout_s
    members = membership.all_members()
    appended: set[str] = set() if request is not None else set(members)
    state_request = pb.SegmentStateRequest(volume_id=volume_id, segments=[seg])
    confirmed: set[str] = set()
    while True:
        if request is not None:
            missing = [m for m in members if m not in appended]
            async with gate:
                codes = await asyncio.gather(*(_append_once(pool, m, request, rpc_timeout_s) for m in missing))
            for member, code in zip(missing, codes):
                if code in (pb.STALE_EPOCH, pb.NOT_EPOCH_OWNER):
                    raise RecoveryError(f"segment {seg}: {member} refused the repair at epoch {epoch}: "
                                        "a newer recovery took over")
                if code == pb.OK:
                    appended.add(member)
        candidates = [m for m in members if m in appended and m not in confirmed]
        replies = await asyncio.gather(*(_call(pool.stub(m).GetSegmentState(state_request, timeout=1.0), 1.0)
                                         for m in candidates))
        for member, reply in zip(candidates, replies):
            if reply is None or reply.error != pb.OK:
                continue
            for state in reply.segments:
                if state.segment != seg:
                    continue
                if state.volume_epoch > epoch or (state.volume_epoch == epoch and state.epoch_owner != owner):
                    raise RecoveryError(f"segment {seg}: {member} moved to epoch {state.volume_epoch}: "
                                        "a newer recovery took over")
                if state.volume_epoch == epoch and state.scl >= tail:
                    confirmed.add(member)
        if has_write_quorum(membership, confirmed):
            return
        if time.monotonic() > deadline:
            raise RecoveryError(
                f"segment {seg}: only {len(confirmed)} members hold the recovered records up to LSN {tail} "
                f"after {timeout_s:.0f} s (need {WRITE_QUORUM}); missing: {sorted(set(members) - confirmed)}"
            )
        await asyncio.sleep(0.05)
