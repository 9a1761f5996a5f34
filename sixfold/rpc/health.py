"""The standard grpc.health.v1 service on every node's gRPC server.

Kubernetes' gRPC probes (and `grpc_health_probe`) ask it. Every node starts its server only
once it is ready (storage opened its log, a compute node recovered or subscribed, ...), so a
server that answers is a node that serves. Unlike a TCP probe, a hung process (SIGSTOPped,
a stuck event loop) does not answer: the kernel accepts its connections, gRPC does not.
`serving` lets a node say NOT_SERVING while it runs, e.g. a writer that was fenced and is
stepping down."""

from __future__ import annotations

from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

OVERALL = ""   # the service name probes ask about when they name none


class NodeHealth(health_aio.HealthServicer):
    def __init__(self, serving: Callable[[], bool] = lambda: True) -> None:
        super().__init__()
        self._serving = serving

    async def Check(self, request, context):
        if request.service == OVERALL and not self._serving():
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return await super().Check(request, context)


def add_health(server: grpc.aio.Server, serving: Callable[[], bool] = lambda: True) -> NodeHealth:
    health = NodeHealth(serving)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return health


def check(address: str, timeout_s: float = 2.0) -> str:
    """The node's overall status ("SERVING", "NOT_SERVING", ...); raises grpc.RpcError if it
    does not answer."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=OVERALL),
                                                          timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
