"""One simulated robot's websocket, speaking the OpenPI wire format (msgpack-numpy frames, as
`openpi_client` sends them), to any OpenPI server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from openpi_client import msgpack_numpy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from openpi_triton.example_observations import make_observations
from openpi_triton.loadgen.fleet import ChannelBroken, ServerError

# Distinct observations per run: enough that no cache sees the same frame twice in a row.
OBSERVATION_POOL = 8


class WebsocketChannel:
    """One robot's websocket. Frames are encoded once up front: encoding is the robot's cost, not the
    server's, and one process has to drive 64 robots."""

    def __init__(self, websocket: ClientConnection, frames: Sequence[bytes], offset: int) -> None:
        self.websocket, self.frames, self.count = websocket, frames, offset
        self.metadata: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, frames: Sequence[bytes], offset: int = 0,
                   api_key: str | None = None) -> WebsocketChannel:
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        try:
            # The options openpi_client connects with; no keep-alive pings, which would only add noise.
            websocket = await connect(url, compression=None, max_size=None, additional_headers=headers,
                                      ping_interval=None, open_timeout=60)
            channel = cls(websocket, frames, offset)
            channel.metadata = msgpack_numpy.unpackb(await websocket.recv())
        except (OSError, ConnectionClosed, asyncio.TimeoutError) as error:
            raise ChannelBroken(f"cannot connect to {url}: {error}") from None
        return channel

    async def call(self) -> float | None:
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        try:
            await self.websocket.send(frame)
            reply = await self.websocket.recv()
        except ConnectionClosed as error:
            raise ChannelBroken(f"connection closed: {error}") from None
        if isinstance(reply, str):
            raise ServerError(reply.strip().splitlines()[-1] if reply.strip() else "empty error frame")
        answer = msgpack_numpy.unpackb(reply)
        if not any(isinstance(value, np.ndarray) for value in answer.values()):  # `actions`, or GR00T's `action.*`
            raise ServerError(f"answer without actions (keys {sorted(answer)[:10]})")
        return answer.get("server_timing", {}).get("infer_ms")

    async def close(self) -> None:
        await self.websocket.close()


def encode_observations(format_name: str, count: int = OBSERVATION_POOL, seed: int = 0) -> list[bytes]:
    return [msgpack_numpy.packb(obs) for obs in make_observations(format_name, count, seed)]
