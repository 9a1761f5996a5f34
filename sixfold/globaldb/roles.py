"""Region roles: which region takes writes, as durable state every process of the cluster reads.

`regions.json` in the cluster's data dir is written only by `sixfold region switchover|failover`
(atomic rename, fsync). The supervisor reads it whenever it starts a node (the node's flags follow
it: a compute node of a region that is not the steady primary starts as a reader of its region's
replicator and never asks its catalog for a role; the primary region's replicator is not run), and
every coordinator leader reads it on every tick (a region that is not the steady primary never
promotes; its catalog's writer is its replicator). See DESIGN.md, "Region roles".

The decisions are pure functions of `RegionRoles`; `load_roles`/`save_roles` are the only I/O.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROLES_FILE = "regions.json"
SWITCHOVER, FAILOVER = "switchover", "failover"


@dataclass(frozen=True)
class RegionRoles:
    primary: int = 1                  # the region whose writer takes writes
    writer: str = "writer-1"          # the primary region's writer instance
    writer_address: str = ""          # its HOST:PORT
    writer_endpoint: str = ""         # the primary region's writer endpoint (follows in-region failovers)
    generation: int = 0               # raised by every change of this record
    change: str = ""                  # "" (steady) | switchover | failover: a role change is in progress
    change_to: int = 0                # the region being promoted
    changes: tuple[dict, ...] = field(default_factory=tuple)   # finished role changes, oldest first (reports)
    needs_resync: tuple[int, ...] = ()   # regions failed over from: out of service until resynced
    # regions whose storage is being seeded or is catching up (resynced or added): their replicator
    # runs, but they owe the primary writer no lease and cannot be promoted until they caught up
    joining: tuple[int, ...] = ()
    # region -> its replicator's HOST:PORT, every region of the cluster (`region add|remove` change
    # it): the primary writer needs a lease from each of them but its own region's and the waived
    replicators: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["changes"] = list(self.changes)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RegionRoles":
        data = json.loads(text)
        data["changes"] = tuple(data.get("changes", ()))
        data["needs_resync"] = tuple(data.get("needs_resync", ()))
        data["joining"] = tuple(data.get("joining", ()))
        data["replicators"] = {int(k): v for k, v in data.get("replicators", {}).items()}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    # ---------------------------------------------------------------- transitions (pure)

    def begin(self, kind: str, to_region: int) -> "RegionRoles":
        """No region may promote on its own from here on (the fence comes after this is applied).
        The same change again (it did not finish) goes on where it is."""
        if (self.change, self.change_to) == (kind, to_region):
            return self
        return replace(self, generation=self.generation + 1, change=kind, change_to=to_region)

    def finish(self, writer: str, writer_address: str, writer_endpoint: str, record: dict,
               resync: tuple[int, ...] = ()) -> "RegionRoles":
        """The promoted region is the steady primary; the old one a secondary (or, after a failover,
        the old primary and every other secondary must be resynced before they ship again)."""
        needs = tuple(sorted(set(self.needs_resync) - {self.change_to} | set(resync)))
        return replace(self, primary=self.change_to, writer=writer, writer_address=writer_address,
                       writer_endpoint=writer_endpoint, generation=self.generation + 1, change="", change_to=0,
                       changes=self.changes + (record,), needs_resync=needs,
                       joining=tuple(r for r in self.joining if r not in resync))

    def join(self, region: int) -> "RegionRoles":
        """A region failed over from (resync) or new (region add) starts shipping: its replicator
        runs, the writer owes it no lease, nobody may promote it."""
        return replace(self, generation=self.generation + 1,
                       needs_resync=tuple(r for r in self.needs_resync if r != region),
                       joining=tuple(sorted(set(self.joining) | {region})))

    def joined(self, region: int) -> "RegionRoles":
        """The region caught up: an ordinary secondary (the writer owes it a lease from now on)."""
        return replace(self, generation=self.generation + 1, joining=tuple(r for r in self.joining if r != region))

    def with_region(self, region: int, replicator_address: str) -> "RegionRoles":
        """`region add`: a new, empty region joins (its replicator seeds and ships; no lease owed yet)."""
        return replace(self.join(region), replicators={**self.replicators, region: replicator_address})

    def without_region(self, region: int) -> "RegionRoles":
        """`region remove`: a secondary region leaves; the writer stops asking its replicator for a lease."""
        return replace(self, generation=self.generation + 1,
                       replicators={r: a for r, a in self.replicators.items() if r != region},
                       joining=tuple(r for r in self.joining if r != region),
                       needs_resync=tuple(r for r in self.needs_resync if r != region))

    def abandon(self) -> "RegionRoles":
        """Nothing was fenced yet: back to the steady state before `begin`."""
        return replace(self, generation=self.generation + 1, change="", change_to=0)


# -------------------------------------------------------------------- decisions (pure)


def steady_primary(roles: RegionRoles, region: int) -> bool:
    return roles.primary == region and not roles.change


def failover_allowed(roles: RegionRoles, region: int) -> bool:
    """A region's coordinators may promote one of its readers only as the steady primary: after a
    fence of the old primary they would otherwise recover it at a higher epoch (hazard 1)."""
    return steady_primary(roles, region)


def lease_waived(roles: RegionRoles) -> set[int]:
    """Regions the primary writer needs no lease from: nobody can promote them (needs a resync, or
    still joining), so no commit the writer acknowledges can be lost to their promotion."""
    return set(roles.needs_resync) | set(roles.joining)


def lessors(roles: RegionRoles, own_region: int) -> dict[int, str]:
    """The replicators a writer in `own_region` asks for its lease (waived ones included: a joining
    region's grant is held by the time it has joined)."""
    return {r: a for r, a in sorted(roles.replicators.items()) if r != own_region}


def region_change_problem(roles: RegionRoles, regions: list[int], region: int, adding: bool) -> str:
    """Why `region add|remove` cannot go on ("" when it can)."""
    if roles.change:
        return (f"a {roles.change} to region {roles.change_to} did not finish: finish it first "
                f"(`sixfold region {roles.change} --to {roles.change_to}`)")
    if adding:
        return ""
    if region not in regions:
        return f"no region {region}; the regions are {', '.join(map(str, regions))}"
    if region == roles.primary:
        return f"region {region} is the primary: switch over to another region first (`sixfold region switchover`)"
    return ""


def replicator_runs(roles: RegionRoles, region: int) -> bool:
    """A region's replicator ships while the region is a secondary. It stops for good when its
    region is being failed over to (it must grant the old primary no more leases)."""
    if region == roles.primary or region in roles.needs_resync:
        return False
    return not (roles.change == FAILOVER and roles.change_to == region)


def switch_problem(roles: RegionRoles, regions: list[int], to_region: int, kind: str) -> str:
    """Why this switchover or failover cannot start ("" when it can)."""
    if len(regions) < 2:
        return "this cluster has one region: start it with `sixfold up --regions 2` (or more) for a global database"
    if to_region not in regions:
        return f"no region {to_region}; the regions are {', '.join(map(str, regions))}"
    if kind == SWITCHOVER and roles.joining and roles.change != SWITCHOVER:
        # every other secondary must be at the fence before the promotion; a joining one may be
        # far from it (seeding)
        return (f"region(s) {', '.join(map(str, roles.joining))} are still joining: wait until they have "
                "joined (`sixfold status`), or remove them")
    if roles.change and (roles.change, roles.change_to) != (kind, to_region):
        return (f"a {roles.change} to region {roles.change_to} did not finish: run `sixfold region {roles.change} "
                f"--to {roles.change_to}{' --allow-data-loss' if roles.change == FAILOVER else ''}` again")
    if to_region == roles.primary:
        return f"region {to_region} already is the primary"
    if to_region in roles.needs_resync:
        return (f"region {to_region} was failed over from and needs a resync first (`sixfold region resync "
                f"{to_region}`); it holds no current copy")
    if to_region in roles.joining:
        return f"region {to_region} is still joining (its storage is being seeded or catching up): wait for it"
    return ""


def other_secondaries(roles: RegionRoles, regions: list[int], to_region: int) -> list[int]:
    """The secondaries that are neither the old primary nor the target of a role change: a
    switchover brings them to the fence and they follow the new primary; after a failover they
    must be resynced (one may hold a tail the promoted region never had)."""
    return [r for r in regions if r not in (roles.primary, to_region) and r not in roles.needs_resync]


def resync_problem(roles: RegionRoles, regions: list[int], region: int, replicator_health: str = "") -> str:
    """Why `region resync` cannot start ("" when it can): only a region failed over from, one whose
    resync or join did not finish, or a secondary whose replicator reports needs-resync (cut off
    for longer than the primary kept its records), with no role change in progress."""
    if region not in regions:
        return f"no region {region}; the regions are {', '.join(map(str, regions))}"
    if region == roles.primary:
        return f"region {region} is the primary: it takes writes and has nothing to resync from"
    if roles.change:
        return (f"a {roles.change} to region {roles.change_to} is in progress: finish it first (`sixfold region "
                f"{roles.change} --to {roles.change_to}`)")
    if region not in roles.needs_resync and region not in roles.joining and replicator_health != "needs-resync":
        return (f"region {region} does not need a resync: it is a secondary that ships the primary's log "
                f"(its replicator: {replicator_health or 'unreachable'})")
    return ""


def rpo_of(source_vdl: int, region_vdl: int, lag_ms_last: float, source_seen_unix_s: float) -> dict:
    """What a failover lost, as far as the promoted region's replicator knew: the primary VDL it last
    heard of minus its own (LSNs), and how far behind it was then (seconds). A primary cut off
    before the replicator's last poll may have committed more: those LSNs were never heard of."""
    return {"rpo_lsns": max(0, source_vdl - region_vdl), "rpo_lag_s": round(lag_ms_last / 1000, 3),
            "primary_last_heard_unix_s": round(source_seen_unix_s, 3), "primary_vdl_last_heard": source_vdl}


def region_writer(roles: RegionRoles, region: int, replicator: str) -> str:
    """The instance a region's catalog names as its writer: the primary's writer, or the region's
    replicator (its readers follow it)."""
    return roles.writer if region == roles.primary else replicator


def compute_plan(roles: RegionRoles, name: str, region: int, replicator_address: str) -> tuple[str, str, bool]:
    """(role, address to follow, may ask the coordinators) of a compute instance being started.

    Only the steady primary region's instances ask their catalog (a restarted former writer learns
    it is a reader there). Elsewhere, and in the primary while its role changes, an instance is a
    reader of its region's replicator: a fenced writer restarted then must never run recovery in
    its region (hazard 2)."""
    if steady_primary(roles, region):
        if name == roles.writer:
            return "writer", "", True
        return "reader", roles.writer_address, True
    return "reader", replicator_address, False


# -------------------------------------------------------------------- the file


def roles_path(cluster_root: Path) -> Path:
    return Path(cluster_root) / ROLES_FILE


def load_roles(path: Path, default: RegionRoles) -> RegionRoles:
    try:
        return RegionRoles.from_json(Path(path).read_text())
    except FileNotFoundError:
        return default


def save_roles(path: Path, roles: RegionRoles) -> None:
    """Atomic and durable: every process must see the old record or the new one, never neither."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(roles.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RolesReader:
    """Re-reads the file only when it changed (the coordinators and the supervisor poll it)."""

    def __init__(self, path: Path, default: RegionRoles) -> None:
        self.path, self.default = Path(path), default
        self._stamp: tuple[int, int] | None = None
        self._roles = default

    def get(self) -> RegionRoles:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            return self.default
        if stamp != self._stamp:
            try:
                self._roles = load_roles(self.path, self.default)
                self._stamp = stamp
            except (OSError, ValueError):
                pass   # (the rename is atomic: this is another process's file being replaced)
        return self._roles
