"""gRPC channels to storage nodes, one per address, with fast reconnects."""

from __future__ import annotations

import grpc

from sixfold.rpc import storage_pb2_grpc

MESSAGE_MAX_BYTES = 16 * 1024 * 1024

# Between Sixfold's own processes: a handshake slower than this is a sick peer.
INTERNAL_CONNECT_TIMEOUT_MS = 2_000
# Applications: the endpoint router holds a new connection (up to 20 s) while a failover finishes.
CLIENT_CONNECT_TIMEOUT_MS = 20_000


def channel_options(connect_timeout_ms: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MESSAGE_MAX_BYTES),
        ("grpc.max_receive_message_length", MESSAGE_MAX_BYTES),
        # grpc's default reconnect backoff grows to minutes; a returning node must be
        # used again within about a second
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # grpc core also uses this as the connect timeout, TCP and HTTP/2 handshake
        # included: at 100 ms, connections through the router failed under load
        ("grpc.min_reconnect_backoff_ms", connect_timeout_ms),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.enable_retries", 0),
    ]


CHANNEL_OPTIONS = channel_options(INTERNAL_CONNECT_TIMEOUT_MS)
CLIENT_CHANNEL_OPTIONS = channel_options(CLIENT_CONNECT_TIMEOUT_MS)


class ChannelPool:
    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, storage_pb2_grpc.StorageStub] = {}

    def stub(self, address: str) -> storage_pb2_grpc.StorageStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
            stub = self._stubs[address] = storage_pb2_grpc.StorageStub(channel)
        return stub

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()
        self._stubs.clear()
