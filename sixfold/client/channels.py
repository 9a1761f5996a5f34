"""gRPC channels to storage nodes, one per address, with fast reconnects."""

from __future__ import annotations

import grpc

from sixfold.rpc import storage_pb2_grpc

MESSAGE_MAX_BYTES = 16 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_MAX_BYTES),
    ("grpc.max_receive_message_length", MESSAGE_MAX_BYTES),
    # grpc's default reconnect backoff grows to minutes; a returning node must be
    # used again within about a second
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.enable_retries", 0),
]


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
