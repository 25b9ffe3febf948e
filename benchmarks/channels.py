"""The side-by-side rows' robot channels: a direct Triton gRPC call of the ensemble, the policy core
in-process (the floor), and the websocket of a server; each row's factory opens what its
robots share for one point. They plug into `openpi_triton.loadgen.fleet.drive_fleet`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np

from benchmarks.observations import ensemble_inputs, policy_from_triton
from openpi_policy.core import Core
from openpi_triton.loadgen.fleet import Channel, OpenChannel
from openpi_triton.loadgen.websocket import WebsocketChannel
from openpi_triton.triton.grpc_tensors import infer_inputs
from openpi_triton.triton.policy import Policy

# Opens the robots' shared resources (a gRPC client, a thread pool) for one point, in its event loop.
OpenChannelFactory = Callable[[], contextlib.AbstractAsyncContextManager[OpenChannel]]


class TritonChannel:
    """One robot calling the ensemble over gRPC, as the front does, but from the robot's side.

    The tensors are mapped from observations once, up front; building the request (serialising the
    tensors) is part of every call, as it is for the front.
    """

    def __init__(self, client: Any, policy: Policy, pool: Sequence[Mapping[str, np.ndarray]], offset: int) -> None:
        self.client, self.policy, self.pool, self.count = client, policy, pool, offset

    async def call(self) -> float | None:
        import tritonclient.grpc.aio as grpcclient

        tensors = self.pool[self.count % len(self.pool)]
        self.count += 1
        inputs = infer_inputs(tensors)
        outputs = [grpcclient.InferRequestedOutput(name) for name in self.policy.outputs.values()]
        result = await self.client.infer(self.policy.name, inputs, outputs=outputs)
        for name in self.policy.outputs.values():
            result.as_numpy(name)
        return None

    async def close(self) -> None:
        return None


class CoreChannel:
    """One robot calling the policy core in-process (batch 1) from its own thread: `core(inputs)`, an
    `openpi_policy.core.Core` (ONNX Runtime, or PyTorch when only one robot calls it at a time)."""

    def __init__(self, core: Core, inputs: Mapping[str, np.ndarray], executor: Executor) -> None:
        self.core, self.inputs, self.executor = core, dict(inputs), executor

    async def call(self) -> float | None:
        # ONNX Runtime releases the GIL while it runs, so robots' calls overlap as real threads would.
        await asyncio.get_running_loop().run_in_executor(self.executor, self.core, self.inputs)
        return None

    async def close(self) -> None:
        return None


def websocket_channels(url: str, frames: list[bytes]) -> OpenChannelFactory:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[OpenChannel]:
        async def open_channel(index: int) -> Channel:
            return await WebsocketChannel.open(url, frames, index)

        yield open_channel

    return factory


def triton_channels(triton_url: str, policy_name: str, observations: list[dict[str, Any]]) -> OpenChannelFactory:
    policy = policy_from_triton(triton_url, policy_name)
    pool = [ensemble_inputs(policy, obs) for obs in observations]

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[OpenChannel]:
        import tritonclient.grpc.aio as grpcclient

        client = grpcclient.InferenceServerClient(triton_url)  # shared, as the front shares one channel
        try:
            async def open_channel(index: int) -> Channel:
                return TritonChannel(client, policy, pool, index)

            yield open_channel
        finally:
            await client.close()

    return factory


def core_channels(core: Core, robots_max: int) -> OpenChannelFactory:
    """Robots as threads calling a thread-safe core (ONNX Runtime's)."""
    from openpi_policy.export import example_inputs

    inputs = example_inputs(1)
    core(inputs)  # first run allocates; not part of any robot's latency

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[OpenChannel]:
        with ThreadPoolExecutor(max_workers=robots_max) as executor:
            async def open_channel(index: int) -> Channel:
                return CoreChannel(core, inputs, executor)

            yield open_channel

    return factory
