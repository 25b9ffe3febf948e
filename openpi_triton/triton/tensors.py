"""Tensors as Triton types them: datatype names <-> NumPy dtypes (no transport: the front reads these;
`grpc_tensors` builds gRPC request inputs)."""

from __future__ import annotations

import numpy as np

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
