"""The storage node core in-process (no gRPC): writes, reads across the
memory/store boundary, materialising, GC, truncation and restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
import time

import pytest

from sixfold.nodes.storage.node import NodeConfig, Rejected, StorageNode
from sixfold.nodes.storage.replica import Code, Meta, split_records
from sixfold.volume.epochs import Truncation
from sixfold.volume.records import apply_record, decode_records, encode_record
from tests.storage_util import VOLUME, ChainBuilder, append_request, page_image

MEMBERS = ["127.0.0.1:1", "127.0.0.1:2"]
PAGES = 3


def config(tmp_path, **overrides) -> NodeConfig:
    settings = dict(materialise_interval_ms=10, gc_interval_ms=30)
    settings.update(overrides)
    return NodeConfig("n1", "1", "az1", MEMBERS[0], tmp_path / "data", **settings)


def make_records(count: int):
    b = ChainBuilder()
    out = []
    for lsn in range(1, count + 1):
        page = lsn % PAGES
        image = bytearray(b.images.get(page, page_image(page)))
        image[lsn % 4000 : lsn % 4000 + 4] = lsn.to_bytes(4, "little")
        out.append(b.change(lsn, page, bytes(image)))
    return out


def expected(records, page, lsn):
    image = None
    for r in records:
        if r.lsn <= lsn and r.page == page:
            image = apply_record(image, r)
    return image


async def write(node, records, batch=10, *, vdl_hint=0, min_read_lsn=0, epoch=1, writer="w1"):
    futures = []
    for i in range(0, len(records), batch):
        await node.log.wait_for_room()
        req = append_request(i // batch + 1, {0: records[i : i + batch]}, members=MEMBERS,
                             vdl_hint=vdl_hint, min_read_lsn=min_read_lsn, epoch=epoch, writer=writer)
        result = node.submit_append(req, None, set())
        assert not isinstance(result, Rejected), result
        futures.append(result)
    await asyncio.gather(*futures)


async def check_reads(node, records, lsns):
    for lsn in lsns:
        for page in range(PAGES):
            result = await node.get_page(VOLUME, 0, page, lsn, 1, 0)
            want = expected(records, page, lsn)
            assert result.code == Code.OK, result.detail
            assert result.exists == (want is not None), (page, lsn)
            if want is not None:
                assert result.data == want, (page, lsn)


async def wait_for(predicate, timeout_s=5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_write_read_materialise_and_restart(tmp_path):
    records = make_records(100)

    async def first():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records[:60], vdl_hint=0)
        replica = node.replicas[(VOLUME, 0)]
        assert replica.durable_scl == 60 and replica.materialised_lsn == 0
        await check_reads(node, records, range(0, 61, 3))
        await write(node, records[60:], vdl_hint=55)  # the writer's VDL lets 1..55 become pages
        await wait_for(lambda: replica.materialised_lsn == 55)
        assert node.store.count("versions", VOLUME, 0) == 55
        await check_reads(node, records, range(0, 101, 3))
        fetched = await node.fetch_records(VOLUME, 0, 0, 0, 0, 0)
        assert fetched.code == Code.OK and not fetched.has_more
        assert fetched.records == b"".join(encode_record(r) for r in records)
        page = await node.fetch_records(VOLUME, 0, 50, 70, 7, 0)
        assert [r.lsn for r in decode_records(page.records)] == list(range(51, 58)) and page.has_more
        await node.close()

    async def second():
        node = StorageNode(config(tmp_path))
        await node.open()
        replica = node.replicas[(VOLUME, 0)]
        assert replica.durable_scl == 100 and replica.materialised_lsn == 55
        replica.check_invariants()
        await check_reads(node, records, range(0, 101, 3))
        # a retransmission of old (materialised) and new records is a duplicate
        await write(node, records, vdl_hint=100)
        assert node.replicas[(VOLUME, 0)].record_count == 100
        await node.close()

    asyncio.run(first())
    asyncio.run(second())


def test_gc_keeps_reads_at_min_read_lsn_and_refuses_older(tmp_path):
    records = make_records(90)

    async def run():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records, vdl_hint=90, min_read_lsn=40)
        replica = node.replicas[(VOLUME, 0)]
        # (the read horizon is raised when a materialise round starts, before its store commit:
        # wait for the commit too, or the count below races it on a loaded machine)
        await wait_for(lambda: replica.oldest_version_lsn == 40 and replica.materialised_lsn == 90)
        await check_reads(node, records, range(40, 91, 5))
        too_old = await node.get_page(VOLUME, 0, 1, 39, 1, 0)
        assert too_old.code == Code.TOO_OLD
        # records stay: peers have not reported their SCLs
        assert node.store.count("records", VOLUME, 0) == 90
        await node.close()

    asyncio.run(run())


def test_get_page_waits_for_scl_then_reports_not_available(tmp_path):
    records = make_records(10)

    async def run():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records[:5])
        waiting = asyncio.create_task(node.get_page(VOLUME, 0, 1, 8, 1, 1000))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await write(node, records[5:])
        result = await waiting
        assert result.code == Code.OK and result.data == expected(records, 1, 8)
        missing = await node.get_page(VOLUME, 0, 1, 50, 1, 30)
        assert missing.code == Code.NOT_AVAILABLE and missing.scl == 10
        unknown = await node.get_page(VOLUME, 9, 1, 1, 1, 0)
        assert unknown.code == Code.UNKNOWN_SEGMENT
        await node.close()

    asyncio.run(run())


def test_records_become_pages_when_their_fsync_completes_after_a_materialise_round(tmp_path):
    """A materialise round that runs between accepting a batch and its fsync cannot use it (the
    durable SCL is below it); the fsync must mark the replica again, or nothing else may (an idle
    segment, or one filled by gossip, stays unmaterialised). Found as a flaky wait under load."""
    records = make_records(10)

    async def run():
        node = StorageNode(config(tmp_path, materialise_interval_ms=3_600_000))  # rounds by hand only
        await node.open()
        req = append_request(1, {0: records}, members=MEMBERS, vdl_hint=10)
        durable = node.submit_append(req, None, set())  # accepted; its flush is only scheduled
        replica = node.replicas[(VOLUME, 0)]
        assert replica.durable_scl == 0
        await node._materialise_once()  # snapshots before the flush: nothing it may use yet
        await durable
        assert replica.durable_scl == 10 and replica.materialised_lsn == 0
        await node._materialise_once()  # only the fsync marked the replica again
        assert replica.materialised_lsn == 10
        await node.close()

    asyncio.run(run())


def test_truncation_survives_restart(tmp_path):
    records = make_records(20)

    async def first():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records)
        rejection, _ = await node.bump_epoch(VOLUME, 0, 2, "recoverer", (), ())
        assert rejection is None
        rejection, replica = await node.truncate(VOLUME, 0, 2, "recoverer", 12)
        assert rejection is None and replica.durable_scl == 12
        await node.close()

    async def second():
        node = StorageNode(config(tmp_path))
        await node.open()
        replica = node.replicas[(VOLUME, 0)]
        assert replica.durable_scl == 12 and replica.chain.highest_lsn == 12 and replica.record_count == 12
        assert replica.meta.history == (Truncation(2, 12),) and replica.epoch == 2
        stale = node.submit_append(append_request(1, {0: records[12:]}, members=MEMBERS), None, set())
        assert isinstance(stale, Rejected) and stale.rejection.code == Code.STALE_EPOCH and stale.node_epoch == 2
        await node.close()

    asyncio.run(first())
    asyncio.run(second())


@pytest.mark.parametrize("log_file_size_bytes", [4096, 64 * 1024])
def test_log_rotation_deletes_old_files_and_restart_keeps_everything(tmp_path, log_file_size_bytes):
    records = make_records(200)

    async def first():
        node = StorageNode(config(tmp_path, log_file_size_bytes=log_file_size_bytes))
        await node.open()
        for i in range(0, 200, 20):  # batches over time, so that files rotate
            await write(node, records[i : i + 20], vdl_hint=i)
        await wait_for(lambda: len(list((tmp_path / "data" / "log").glob("*.log"))) <= 2)
        await node.close()

    async def second():
        node = StorageNode(config(tmp_path))
        await node.open()
        await check_reads(node, records, range(0, 201, 17))
        assert node.replicas[(VOLUME, 0)].durable_scl == 200
        await node.close()

    asyncio.run(first())
    asyncio.run(second())


# ------------------------------------------------------------------ epoch upgrade


def restamped(records, epoch):
    """Copies as a recovery re-replicates them: same records, the recovery's epoch."""
    return [dataclasses.replace(r, epoch=epoch) for r in records]


def stored_epochs(tmp_path, table: str) -> dict[int, int]:
    """lsn -> epoch of the store's records or versions rows (what truncations void by)."""
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "pages.sqlite3")) as db:
        return dict(db.execute(f"SELECT lsn, epoch FROM {table} WHERE volume = ? AND segment = 0", (VOLUME,)))


def stored_history(tmp_path) -> list[list[int]]:
    """[epoch, start_lsn, baseline_lsn] entries of the stored segment meta."""
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "pages.sqlite3")) as db:
        (meta,) = db.execute("SELECT meta FROM segments WHERE volume = ? AND segment = 0", (VOLUME,)).fetchone()
    return json.loads(meta)["history"]


async def no_materialise():
    return None


async def repair(node, records, epoch, owner="rec", vdl_hint=0, request_epoch=None):
    """What a recovery's repair step sends: its re-stamped copies, at its epoch."""
    await node.log.wait_for_room()
    req = append_request(1, {0: restamped(records, epoch)}, members=MEMBERS, epoch=request_epoch or epoch,
                         writer=owner, vdl_hint=vdl_hint)
    result = node.submit_append(req, None, set())
    assert not isinstance(result, Rejected), result
    await result


async def fetched(node, after=0):
    result = await node.fetch_records(VOLUME, 0, after, 0, 0, 0)
    assert result.code == Code.OK and not result.has_more
    return decode_records(result.records)


async def check_reads_at(node, records, lsns, epoch):
    for lsn in lsns:
        for page in range(PAGES):
            result = await node.get_page(VOLUME, 0, page, lsn, epoch, 0)
            want = expected(records, page, lsn)
            assert result.code == Code.OK, result.detail
            assert result.exists == (want is not None) and (want is None or result.data == want), (page, lsn)


def test_epoch_upgrade_is_persisted_and_a_stray_truncation_does_not_void_it(tmp_path):
    records = make_records(30)
    stray = Truncation(2, 5)  # an unfinished recovery at epoch 2 that truncated at 5

    async def first():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records, vdl_hint=10)
        replica = node.replicas[(VOLUME, 0)]
        await wait_for(lambda: replica.materialised_lsn == 10)
        # recovery at epoch 3: baseline 5, VDL 20; repairs (5, 20] re-stamped, truncates at 20
        assert (await node.bump_epoch(VOLUME, 0, 3, "rec", (), ()))[0] is None
        await repair(node, records[5:20], 3, vdl_hint=5)
        assert replica.durable_scl == 30 and replica.chain.highest_lsn == 30  # the chain did not move
        rejection, _ = await node.truncate(VOLUME, 0, 3, "rec", 20)
        assert rejection is None and replica.durable_scl == 20
        await wait_for(lambda: replica.materialised_lsn == 20 and not replica.restamp)
        want = {lsn: 3 if lsn > 5 else 1 for lsn in range(1, 21)}
        assert stored_epochs(tmp_path, "records") == want
        versions = stored_epochs(tmp_path, "versions")
        assert versions and all(epoch == want[lsn] for lsn, epoch in versions.items())
        assert [(r.lsn, r.epoch) for r in await fetched(node)] == sorted(want.items())
        # the stray truncation reaches this replica (gossip): it voids epoch-1 copies above 5,
        # and the re-stamped 6..20 (records rows and page versions) are out of its reach
        await node.ingest_from_peer(replica, Meta(3, "rec", (stray,), ()), [])
        assert replica.meta.history == (stray, Truncation(3, 20)) and replica.durable_scl == 20
        await wait_for(lambda: [2, 5, 5] in stored_history(tmp_path))
        assert stored_epochs(tmp_path, "versions") == versions
        assert stored_epochs(tmp_path, "records") == want
        await check_reads_at(node, records, range(1, 21), 3)
        await node.close()
        return want, versions

    async def second(want, versions):
        node = StorageNode(config(tmp_path))
        await node.open()
        replica = node.replicas[(VOLUME, 0)]
        replica.check_invariants()
        assert replica.durable_scl == 20 and replica.meta.history == (stray, Truncation(3, 20))
        assert [(r.lsn, r.epoch) for r in await fetched(node)] == sorted(want.items())
        assert stored_epochs(tmp_path, "versions") == versions
        await check_reads_at(node, records, range(1, 21), 3)
        # after the upgrade, lower-epoch copies are duplicates (epoch-1 copies above 5 are void
        # under (2, 5), so a request carrying them is refused as before); other contents are refused
        await node.log.wait_for_room()
        old = node.submit_append(append_request(2, {0: records[:20]}, members=MEMBERS, epoch=3, writer="rec"),
                                 None, set())
        assert isinstance(old, Rejected) and "void" in old.rejection.detail  # epoch 1 above (2, 5): void
        await repair(node, records[:5], 1, request_epoch=3)  # not void at or below 5: duplicates
        await repair(node, records[5:20], 2, request_epoch=3)  # not void, lower epoch than held: duplicates
        forged = ChainBuilder(3)
        forged.prev_lsn = records[11].prev_lsn
        other = forged.full(12, 0, page_image(99))
        different = node.submit_append(append_request(3, {0: [other]}, members=MEMBERS, epoch=3, writer="rec"),
                                       None, set())
        assert isinstance(different, Rejected) and different.rejection.code == Code.INVALID
        assert [(r.lsn, r.epoch) for r in await fetched(node)] == sorted(want.items())
        await node.close()

    asyncio.run(second(*asyncio.run(first())))


def test_epoch_upgrade_only_in_the_log_reaches_the_store_after_a_restart(tmp_path):
    records = make_records(20)

    async def first():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records, vdl_hint=10)
        replica = node.replicas[(VOLUME, 0)]
        await wait_for(lambda: replica.materialised_lsn == 10)
        node._materialise_once = no_materialise  # as if the node died before its next store batch
        assert (await node.bump_epoch(VOLUME, 0, 3, "rec", (), ()))[0] is None
        await repair(node, records[5:15], 3)  # 6..10 materialised, 11..15 held
        assert stored_epochs(tmp_path, "records")[8] == 1 and stored_epochs(tmp_path, "versions")[8] == 1
        # FetchRecords serves the upgraded copies, also where the store still has the old one
        assert [r.epoch for r in await fetched(node)] == [1] * 5 + [3] * 10 + [1] * 5
        assert [r.epoch for r in await fetched(node, 7)] == [3] * 8 + [1] * 5
        await node.close()

    async def second():
        node = StorageNode(config(tmp_path))
        node._materialise_once = no_materialise  # run by hand below
        await node.open()  # the log replays the upgrade over the stored (materialised) old copies
        replica = node.replicas[(VOLUME, 0)]
        replica.check_invariants()
        assert sorted(replica.restamp) == list(range(6, 16))
        assert [r.epoch for r in await fetched(node)] == [1] * 5 + [3] * 10 + [1] * 5
        versions_before = stored_epochs(tmp_path, "versions")
        assert all(epoch == 1 for epoch in versions_before.values())
        # the stray truncation arrives before the store got the new epochs: the batch that
        # saves it must re-stamp first, or it voids the materialised versions 6..10
        rejection, _ = await node.bump_epoch(VOLUME, 0, 4, "rec4", (Truncation(2, 5),), ())
        assert rejection is None and replica.durable_scl == 15  # 16..20 (epoch 1, held) are void
        await StorageNode._materialise_once(node)
        assert not replica.restamp
        assert stored_epochs(tmp_path, "records") == {lsn: 3 if lsn > 5 else 1 for lsn in range(1, 16)}
        versions = stored_epochs(tmp_path, "versions")
        assert versions.keys() == versions_before.keys()
        assert all(epoch == (3 if lsn > 5 else 1) for lsn, epoch in versions.items())
        await node.close()

    asyncio.run(first())
    asyncio.run(second())


def test_gossip_upgrades_old_copies_and_refills_voided_ones(tmp_path):
    records = make_records(20)
    stray = Meta(3, "rec", (Truncation(2, 5),), ())  # an unfinished recovery at 2 truncated at 5

    async def open_node(name, held, vdl_hint):
        node = StorageNode(config(tmp_path / name))
        await node.open()
        await write(node, held, vdl_hint=vdl_hint)
        assert (await node.bump_epoch(VOLUME, 0, 3, "rec", (), ()))[0] is None
        return node, node.replicas[(VOLUME, 0)]

    async def pull(node, replica, source):
        """One gossip fetch (gossip.py's _fetch): FetchRecords after our SCL on the peer, then ingest."""
        result = await source.fetch_records(VOLUME, 0, replica.chain.scl, 0, 0, 0)
        peer = result.replica
        meta = Meta(peer.epoch, peer.meta.owner, peer.meta.history, peer.meta.members)
        return await node.ingest_from_peer(replica, meta, split_records(result.records))

    async def run():
        # A got the repair of (5, 20]; 6..10 are served from its store, 11..20 from memory
        upgraded, a = await open_node("a", records, vdl_hint=10)
        await repair(upgraded, records[5:20], 3)
        await wait_for(lambda: a.materialised_lsn == 10 and not a.restamp)
        # B missed the repair and lsn 6: its fetch covers the old copies it holds above the gap
        gap, b = await open_node("b", [r for r in records if r.lsn != 6], vdl_hint=3)
        assert b.durable_scl == 5
        pulled = await pull(gap, b, upgraded)
        assert [r.lsn for r, _ in pulled.records] == list(range(6, 21)) and pulled.upgraded == list(range(7, 21))
        assert b.durable_scl == 20
        # C missed the repair and has every old copy: gossip does not touch it (not behind)
        missed, c = await open_node("c", records, vdl_hint=3)
        # the stray truncation reaches all three
        for node, replica in ((upgraded, a), (gap, b), (missed, c)):
            await node.ingest_from_peer(replica, stray, [])
        assert (a.durable_scl, b.durable_scl, c.durable_scl) == (20, 20, 5)
        refilled = await pull(missed, c, upgraded)  # C is behind now: it gets the upgraded copies
        assert [r.lsn for r, _ in refilled.records] == list(range(6, 21)) and not refilled.upgraded
        assert c.durable_scl == 20
        reference = [(r.lsn, r.epoch) for r in await fetched(upgraded)]
        assert reference == [(lsn, 1 if lsn <= 5 else 3) for lsn in range(1, 21)]
        for node in (gap, missed):
            assert [(r.lsn, r.epoch) for r in await fetched(node)] == reference
        for node in (upgraded, gap, missed):
            await node.close()
        # and after a restart B and C still hold the upgraded copies
        for name in ("b", "c"):
            node = StorageNode(config(tmp_path / name))
            await node.open()
            node.replicas[(VOLUME, 0)].check_invariants()
            assert [(r.lsn, r.epoch) for r in await fetched(node)] == reference
            await node.close()

    asyncio.run(run())


def test_upgraded_copy_arriving_with_the_stray_truncation_replaces_the_stored_old_copy(tmp_path):
    records = make_records(10)
    stray = Truncation(2, 5)

    async def first():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records)  # no VDL yet: stored as records, not materialised
        replica = node.replicas[(VOLUME, 0)]
        await wait_for(lambda: len(stored_epochs(tmp_path, "records")) == 10)
        assert (await node.bump_epoch(VOLUME, 0, 3, "rec", (), ()))[0] is None
        # the recoverer learned the stray truncation: its repair voids the old copies here
        # and brings the new ones in one request (the store's old rows go in the same batch)
        await node.log.wait_for_room()
        req = append_request(1, {0: restamped(records[5:], 3)}, members=MEMBERS, epoch=3, writer="rec",
                             truncations=(stray,))
        result = node.submit_append(req, None, set())
        assert not isinstance(result, Rejected), result
        await result
        assert replica.durable_scl == 10 and replica.meta.history == (stray,)
        await wait_for(lambda: [2, 5, 5] in stored_history(tmp_path))
        assert stored_epochs(tmp_path, "records") == {lsn: 3 if lsn > 5 else 1 for lsn in range(1, 11)}
        await node.close()

    async def second():
        node = StorageNode(config(tmp_path))
        await node.open()
        assert node.replicas[(VOLUME, 0)].durable_scl == 10
        assert [(r.lsn, r.epoch) for r in await fetched(node)] == [(lsn, 3 if lsn > 5 else 1) for lsn in range(1, 11)]
        await node.close()

    asyncio.run(first())
    asyncio.run(second())


def peer_meta(history=()):
    return Meta(3, "rec", tuple(history), ())


def encoded(records):
    return split_records(b"".join(encode_record(r) for r in records))


def test_old_copies_a_repair_missed_are_dropped_at_its_truncation_and_never_become_pages(tmp_path, caplog):
    """Was the strict xfail test_known_gap_an_old_copy_materialised_below_a_recovery_vdl_is_lost_to_a_
    stray_truncation. A recovery at 3 (baseline 10, VDL 20) fenced this replica and truncated it,
    but its repair of 11..20 (re-stamped) did not reach it. The durable floor 20 used to let the
    old copies become page versions; the stray truncation (2, 10) of a recovery that died then
    deleted them while the replica kept reporting SCL 20, so gossip never refilled them. Now the
    truncation carries the baseline: the old copies are dropped at once (SCL 10), nothing above 10
    becomes a page until the re-stamped copies arrive, and gossip brings those."""
    records = make_records(30)
    want = {lsn: 1 if lsn <= 10 else 3 for lsn in range(1, 21)}

    async def first():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records)
        replica = node.replicas[(VOLUME, 0)]
        assert (await node.bump_epoch(VOLUME, 0, 3, "rec", (), ()))[0] is None
        rejection, _ = await node.truncate(VOLUME, 0, 3, "rec", 20, 10)
        assert rejection is None and replica.durable_scl == 10 and replica.chain.highest_lsn == 10
        assert replica.meta.history == (Truncation(3, 20, 10),)
        await wait_for(lambda: replica.materialised_lsn == 10
                       and stored_epochs(tmp_path, "records") == {lsn: 1 for lsn in range(1, 11)})
        assert replica.materialise_limit() == 10
        # a peer that missed the repair too still serves the old copies: skipped, no error
        added = await node.ingest_from_peer(replica, peer_meta(), encoded(records[10:20]))
        assert added.stale == 10 and not added.records and replica.durable_scl == 10
        # the stray truncation arrives (gossip): nothing here is void under it
        await node.ingest_from_peer(replica, peer_meta([Truncation(2, 10)]), [])
        await wait_for(lambda: [2, 10, 10] in stored_history(tmp_path))
        assert replica.durable_scl == 10 and len(await fetched(node)) == 10
        # a repaired peer serves the re-stamped copies: the gap is filled
        added = await node.ingest_from_peer(replica, peer_meta(), encoded(restamped(records[10:20], 3)))
        assert [r.lsn for r, _ in added.records] == list(range(11, 21)) and replica.durable_scl == 20
        await wait_for(lambda: replica.materialised_lsn == 20)
        assert stored_epochs(tmp_path, "records") == want
        assert all(epoch == want[lsn] for lsn, epoch in stored_epochs(tmp_path, "versions").items())
        assert [(r.lsn, r.epoch) for r in await fetched(node)] == sorted(want.items())
        await check_reads_at(node, records, range(1, 21), 3)
        await node.close()

    async def second():
        node = StorageNode(config(tmp_path))
        await node.open()
        replica = node.replicas[(VOLUME, 0)]
        replica.check_invariants()
        assert replica.durable_scl == 20 and replica.meta.history == (Truncation(2, 10), Truncation(3, 20, 10))
        assert [(r.lsn, r.epoch) for r in await fetched(node)] == sorted(want.items())
        await check_reads_at(node, records, range(1, 21), 3)
        await node.close()

    with caplog.at_level(logging.INFO, logger="sixfold.storage.node"):
        asyncio.run(first())
        asyncio.run(second())
    assert "old copy(ies) dropped" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_materialised_old_copies_serve_reads_but_are_not_fetched_until_upgraded(tmp_path):
    """A replica that made page versions of 1..15 (VDL 15) before it learns a recovery (elsewhere)
    at 3 with baseline 10 and VDL 20: the versions of 11..15 stay (a record is materialised only
    at or below a durable VDL: its content is right), 16..20 held are dropped; FetchRecords
    serves no old copy, until gossip brings the re-stamped ones (an upgrade for 11..15)."""
    records = make_records(20)

    async def run():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records, vdl_hint=15)
        replica = node.replicas[(VOLUME, 0)]
        await wait_for(lambda: replica.materialised_lsn == 15)
        await node.ingest_from_peer(replica, peer_meta([Truncation(3, 20, 10)]), [])
        assert replica.epoch == 3 and replica.durable_scl == 15 and not replica.held
        assert [r.lsn for r in await fetched(node)] == list(range(1, 11))
        page = await node.fetch_records(VOLUME, 0, 10, 0, 3, 0)  # whole pages of old copies: read on
        assert page.code == Code.OK and page.records == b"" and not page.has_more
        await check_reads_at(node, records, range(1, 16), 3)
        added = await node.ingest_from_peer(replica, peer_meta(), encoded(restamped(records[10:20], 3)))
        assert added.upgraded == list(range(11, 16)) and replica.durable_scl == 20
        assert [(r.lsn, r.epoch) for r in await fetched(node)] == [(lsn, 1 if lsn <= 10 else 3)
                                                                    for lsn in range(1, 21)]
        page = await node.fetch_records(VOLUME, 0, 10, 0, 3, 0)
        assert [r.lsn for r in decode_records(page.records)] == [11, 12, 13] and page.has_more
        await wait_for(lambda: not replica.restamp and replica.materialised_lsn == 20)
        await check_reads_at(node, records, range(1, 21), 3)
        await node.close()

    asyncio.run(run())


def test_reads_wait_for_dropped_old_copies_even_before_the_drop_is_durable(tmp_path):
    """Learning (3, 20, 10) drops the old copies 11..20 from memory at once; the SCL reads check
    must drop with them, not when the change's log frame is fsynced, or a read in that window
    builds the page without them."""
    records = make_records(30)

    async def run():
        node = StorageNode(config(tmp_path))
        await node.open()
        await write(node, records)
        replica = node.replicas[(VOLUME, 0)]
        assert replica.durable_scl == 30
        changes = replica.learn(peer_meta([Truncation(3, 20, 10)]))
        assert changes.dropped_stale == list(range(11, 21)) and changes.voided == list(range(21, 31))
        durable = node._persist([(replica, changes, None)], None)  # queued, not yet fsynced
        for lsn in (11, 15, 20):
            result = await node.get_page(VOLUME, 0, lsn % PAGES, lsn, 3, 0)
            assert result.code == Code.NOT_AVAILABLE and result.scl == 10, (lsn, result)
        await durable
        assert replica.durable_scl == 10
        await check_reads_at(node, records, range(1, 11), 3)
        await node.close()

    asyncio.run(run())
