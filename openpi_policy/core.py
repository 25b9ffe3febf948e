"""The policy core on CPU: `model.onnx` in ONNX Runtime, shared by the Triton python model and the
in-process reference pipeline, so both run the network with the same settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from openpi_policy import spec

# Threads of one ONNX Runtime run; 0 = one per core. Read inside Triton's python stub, which gets the
# server's environment.
THREADS_ENV = "OPENPI_TRITON_ORT_THREADS"
# Whether ONNX Runtime's idle workers spin-wait for the next run (its default) or sleep (ours): the core
# shares its cores with the front and the python-backend preprocess, which spinning workers starve.
SPINNING_ENV = "OPENPI_TRITON_ORT_SPINNING"


class OnnxRuntimeCore:
    """`model.onnx` in an ONNX Runtime CPU session: core inputs (`spec.CORE_INPUTS`) -> actions."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `openpi-triton export` to create it")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get(THREADS_ENV, "0")) if threads is None else threads
        spinning = os.environ.get(SPINNING_ENV, "0")
        if spinning not in ("0", "1"):
            raise ValueError(f"{SPINNING_ENV} must be 0 or 1, got {spinning!r}")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = list(spec.CORE_INPUTS)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        (actions,) = self.session.run(["actions"], {name: inputs[name] for name in self.input_names})
        return actions
