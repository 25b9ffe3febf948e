"""What the front -> Triton leg would save by passing large tensors through Triton's system shared
memory instead of inline in the gRPC request (possible when the front runs next to Triton).

Measured on the ensemble's first step (the preprocess model: same inputs, a few ms of work), so the
policy core's run-to-run spread does not drown the difference; calls alternate inline / shared memory.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from benchmarks.observations import ensemble_inputs
from benchmarks.stats import latency_summary
from frontend.policies import Policy

LARGE_BYTES = 64 * 1024  # tensors at least this big go to shared memory


def _first_step(client: Any, policy: Policy) -> tuple[str, dict[str, str], str]:
    """(step model, ensemble input -> step input, the step's smallest output)."""
    config = client.get_model_config(policy.name, as_json=True)["config"]
    step = config["ensemble_scheduling"]["step"][0]
    renames = {ensemble: own for own, ensemble in step.get("input_map", {}).items()}
    outputs = client.get_model_config(step["model_name"], as_json=True)["config"]["output"]
    smallest = min(outputs, key=lambda o: np.prod([max(int(d), 1) for d in o.get("dims", [])]))
    return step["model_name"], renames, smallest["name"]


async def _alternate(url: str, model: str, calls: int, inline: Callable[[], list[Any]],
                     shared: Callable[[], list[Any]], output: str,
                     fill: Callable[[], None]) -> tuple[list[float], list[float]]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(output)]
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for index in range(calls + 5):
            for use_shm in ((False, True) if index % 2 == 0 else (True, False)):
                started = time.perf_counter()
                if use_shm:
                    fill()  # the copy into shared memory is part of the shared-memory path's cost
                await client.infer(model, (shared if use_shm else inline)(), outputs=outputs)
                if index >= 5:
                    times[use_shm].append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.005)
    finally:
        await client.close()
    return times[False], times[True]


def compare_inline_and_shared_memory(url: str, policy: Policy, observation: dict[str, Any],
                                     calls: int) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    sync = grpcclient.InferenceServerClient(url)
    model, renames, output = _first_step(sync, policy)
    tensors = {renames.get(name, name): value for name, value in ensemble_inputs(policy, observation).items()}
    large = {name: value for name, value in tensors.items() if value.nbytes >= LARGE_BYTES}
    regions = {name: shared_memory.SharedMemory(create=True, size=value.nbytes, name=f"bench_{uuid.uuid4().hex[:12]}")
               for name, value in large.items()}
    try:
        for name, region in regions.items():
            sync.register_system_shared_memory(region.name, "/" + region.name, large[name].nbytes)

        def fill() -> None:
            for name, region in regions.items():
                np.ndarray(large[name].shape, large[name].dtype, buffer=region.buf)[...] = large[name]

        def inputs(use_shm: bool) -> list[Any]:
            built = []
            for name, value in tensors.items():
                tensor = aioclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
                if use_shm and name in regions:
                    tensor.set_shared_memory(regions[name].name, value.nbytes)
                else:
                    tensor.set_data_from_numpy(value)
                built.append(tensor)
            return built

        inline, shared = asyncio.run(_alternate(url, model, calls, lambda: inputs(False), lambda: inputs(True),
                                                output, fill))
    finally:
        for region in regions.values():
            sync.unregister_system_shared_memory(region.name)
            region.close()
            region.unlink()
        sync.close()
    saving = np.subtract(inline, shared)
    return {
        "model": model, "shared_inputs": {name: value.nbytes for name, value in large.items()},
        "inline_ms": latency_summary(inline), "shared_memory_ms": latency_summary(shared),
        "saving_ms_median": float(np.median(saving)),
        "saving_ms_iqr": [float(x) for x in np.percentile(saving, [25, 75])],
    }
