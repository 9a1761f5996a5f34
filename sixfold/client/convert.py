"""Conversions between protobuf messages and the pure volume types."""

from __future__ import annotations

from sixfold.rpc import storage_pb2 as pb
from sixfold.volume.epochs import Truncation
from sixfold.volume.membership import COPIES, Membership
from sixfold.volume.recovery import MemberState


def truncations_to_pb(history: tuple[Truncation, ...]) -> list[pb.Truncation]:
    return [pb.Truncation(epoch=t.epoch, start_lsn=t.start_lsn, baseline_lsn=t.baseline_lsn) for t in history]


def truncations_from_pb(items) -> tuple[Truncation, ...]:
    """An entry without a baseline (an older node) has baseline = start (see epochs.py).
    Raises ValueError for a baseline above the start."""
    return tuple(
        Truncation(t.epoch, t.start_lsn, t.baseline_lsn if t.HasField("baseline_lsn") else None) for t in items
    )


def member_state(member: str, state: pb.SegmentState) -> MemberState:
    return MemberState(
        member=member,
        segment=state.segment,
        epoch=state.volume_epoch,
        owner=state.epoch_owner,
        scl=state.scl,
        highest_lsn=state.highest_lsn,
        vdl_hint=state.vdl_hint,
        truncations=truncations_from_pb(state.truncations),
        membership=membership_of(state),
    )


def membership_of(state: pb.SegmentState) -> Membership | None:
    """The PG membership a replica reports (None: a replica that does not know one yet)."""
    if len(state.members) != COPIES or len(set(state.members)) != COPIES:
        return None
    try:
        return Membership(state.membership_epoch, tuple(state.members), tuple(state.next_members))
    except ValueError:
        return None
