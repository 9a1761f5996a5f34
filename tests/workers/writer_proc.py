"""A writer process for crash tests: commits two-page transactions forever and
prints "ACK <i> <commit_lsn>" after each acknowledged commit (flushed), so the
test knows exactly what was acknowledged before it sends SIGKILL.

    python -m tests.workers.writer_proc VOLUME_ID WRITER_ID NODES_JSON
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys

from sixfold.client.quorum import ClientSettings, PageWrite, QuorumClient
from sixfold.volume.placement import StorageNodeInfo
from sixfold.volume.records import PAGE_SIZE_BYTES

PAIR_OFFSET = 5000


def page_image(i: int) -> bytes:
    """Page content for transaction i: the number, repeated, so damage shows."""
    return (struct.pack("<Q", i) * (PAGE_SIZE_BYTES // 8))


async def main(volume_id: str, writer_id: str, nodes_json: str) -> None:
    nodes = [StorageNodeInfo(**n) for n in json.loads(nodes_json)]
    client = QuorumClient(nodes, writer_id, ClientSettings(volume_id=volume_id, pages_per_segment=64))
    recovered = await client.open_writer()
    print(f"OPEN {recovered.epoch} {recovered.vdl}", flush=True)
    i = 0
    while True:
        i += 1
        lsn = await client.commit([PageWrite(i, page_image(i)), PageWrite(PAIR_OFFSET + i, page_image(i))])
        print(f"ACK {i} {lsn}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
