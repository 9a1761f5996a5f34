"""grpc.health.v1 on real node processes: what Kubernetes' gRPC probes ask."""

from __future__ import annotations

import grpc
import pytest

from sixfold.rpc import health


@pytest.mark.timeout(120)
def test_nodes_answer_serving_and_a_paused_node_does_not_answer(compute_cluster):
    storage = compute_cluster.storage.nodes[0]
    for address in (storage.address, compute_cluster.writer.address, compute_cluster.readers[0].address):
        assert health.check(address) == "SERVING", address
    storage.pause()      # the kernel still accepts its connections: a TCP probe would pass
    try:
        with pytest.raises(grpc.RpcError) as caught:
            health.check(storage.address, timeout_s=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        storage.resume()
    assert health.check(storage.address) == "SERVING"
