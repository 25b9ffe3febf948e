"""Tensors as Triton types them: datatype names <-> NumPy dtypes, and named arrays -> request inputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tritonclient.grpc import InferInput  # the same class tritonclient.grpc.aio hands out
from tritonclient.utils import np_to_triton_dtype

TRITON_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}


def triton_datatype(config_type: str) -> str:
    """A model config's data_type (`TYPE_FP32`, `TYPE_STRING`) as the protocol names it (`FP32`, `BYTES`)."""
    return config_type.removeprefix("TYPE_").replace("STRING", "BYTES")


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
