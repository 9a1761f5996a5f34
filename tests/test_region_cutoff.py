"""A secondary region cut off from the primary's storage for longer than that storage keeps the
records it has not shipped (`--shipping-retain-s`), on real processes: its replicator reports
needs-resync after the heal (it never ships a log with a hole), and `region resync` seeds it again
while the primary goes on committing (sixfold/globaldb/resync.py)."""

from __future__ import annotations

import time

import pytest

from sixfold.runtime import partition
from tests.test_cli import force_teardown
from tests.test_global_regions import address_of, cli, replicator_row, rows_in, wait_rows
from tests.test_region_resync import collected_above, wait_acked, writing_two_regions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(partition.unavailable_reason() is not None,
                                 reason=f"{partition.unavailable_reason()}")]
SHIPPING_RETAIN_S = 2.0
COLLECTED_WITHIN_S = 120.0


def test_a_region_cut_off_past_the_retention_needs_a_resync_and_gets_it_without_stalling_the_primary(tmp_path):
    data_dir = tmp_path / "cluster"
    writer = None
    try:
        nodes, writer = writing_two_regions(data_dir, "--shipping-retain-s", SHIPPING_RETAIN_S)
        primary_storage = [n for n in nodes if n.region == 1 and n.kind == "storage"]

        # replicator-2 is cut off from the primary's storage only: it still grants the writer its
        # lease, so the primary commits on, and its storage collects what region 2 has not shipped
        args = [a for n in primary_storage for a in ("--from", n.name)]
        cli("chaos", "partition", "--data-dir", data_dir, "--node", "replicator-2", *args, "--json")
        try:
            row = replicator_row(data_dir)
            frozen = row["vdl"]
            fetched = max(frozen, row["source_vdl"])   # it fetched nothing above what it heard of
            deadline = time.monotonic() + COLLECTED_WITHIN_S
            while not collected_above([n.address for n in primary_storage], fetched):
                assert time.monotonic() < deadline, f"the primary's storage kept the records above {fetched}"
                time.sleep(0.5)
        finally:
            cli("chaos", "heal", "--data-dir", data_dir, "--json")
        deadline = time.monotonic() + 60
        while (row := replicator_row(data_dir))["health"] != "needs-resync":
            assert row["health"] != "ok" or row["vdl"] <= frozen, f"shipped across the collected records: {row}"
            assert time.monotonic() < deadline, f"replicator-2 did not report needs-resync: {row}"
            time.sleep(0.2)

        acked_before_resync = len(writer.acked)
        report = cli("region", "resync", "--data-dir", data_dir, 2, "--json", timeout=400)
        phases = [p["phase"] for p in report["phases"]]
        joining = next(i for i, p in enumerate(phases) if "owes it no lease" in p)
        stopped = next(i for i, p in enumerate(phases) if p.startswith("stopped region 2"))
        assert joining < stopped, f"the writer owed the lease of a stopped replicator: {phases}"
        assert report["seeded_lsn"] > frozen, f"region 2 was not seeded from pages: {report}"
        wait_acked(writer, acked_before_resync + 20)
        writer.stop.set()
        writer.join(30)
        assert writer.unknown == [], f"commits failed while region 2 was cut off or resynced: {writer.unknown}"

        expected = rows_in(address_of(data_dir, "writer-1"), "SELECT id, v FROM t ORDER BY id")
        assert {v for _, v in expected} == set(writer.acked)
        wait_rows(address_of(data_dir, "reader-2-1"), "SELECT id, v FROM t ORDER BY id", expected, timeout_s=60)
        row = replicator_row(data_dir)
        assert row["health"] == "ok" and row["seeded_lsn"] == report["seeded_lsn"]
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(30)
        force_teardown(data_dir)
