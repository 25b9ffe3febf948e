"""Named arrays -> the typed inputs of a Triton gRPC request (inline, or in a shared-memory region)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tritonclient.grpc import InferInput  # the same class tritonclient.grpc.aio hands out
from tritonclient.utils import np_to_triton_dtype


def infer_input(name: str, value: np.ndarray, shared_memory: tuple[str, int] | None = None) -> InferInput:
    """One typed request input: its data inline, or (region name, byte offset) in a registered
    shared-memory region that already holds it."""
    tensor = InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
    if shared_memory is None:
        tensor.set_data_from_numpy(value)
    else:
        region, offset = shared_memory
        tensor.set_shared_memory(region, value.nbytes, offset)
    return tensor


def infer_inputs(arrays: Mapping[str, np.ndarray]) -> list[InferInput]:
    """Named arrays as the inputs of a request, each typed by its dtype."""
    return [infer_input(name, value) for name, value in arrays.items()]
