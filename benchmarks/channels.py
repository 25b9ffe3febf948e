"""Robot channels without a websocket: a direct Triton gRPC call of the ensemble, and ONNX Runtime on
the policy core in-process (the floor). Both plug into `openpi_triton.loadgen.fleet.drive_fleet`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from openpi_triton.triton.policy import Policy
from openpi_triton.triton.tensors import infer_inputs


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


class OnnxChannel:
    """One robot calling `session.run` on the policy core (batch 1) from its own thread."""

    def __init__(self, session: Any, inputs: Mapping[str, np.ndarray], executor: Executor) -> None:
        self.session, self.inputs, self.executor = session, dict(inputs), executor

    async def call(self) -> float | None:
        # ONNX Runtime releases the GIL while it runs, so robots' calls overlap as real threads would.
        await asyncio.get_running_loop().run_in_executor(self.executor, self.session.run, None, self.inputs)
        return None

    async def close(self) -> None:
        return None
