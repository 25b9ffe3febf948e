"""The policy core's runtimes, chosen by the `core` parameter of its model config, and shared by the Triton
python model and the in-process reference pipeline, so both run the network with the same settings:

- ONNX Runtime on `model.onnx` on the CPU (`configs/cpu.pbtxt`; the default, without the parameter);
- PyTorch (`configs/gpu_torch.pbtxt`: `{"runtime": "torch", ...}`), on CUDA in float16 with CUDA graphs,
  see `openpi_policy.torch_core`. Only this runtime imports torch.

Which runtime a config asks for is read by `openpi_policy.core_config`, which both runtimes import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from openpi_policy import spec
from openpi_policy.core_config import config_device, core_settings

# Threads of one ONNX Runtime run; 0 = one per core. Read inside Triton's python stub, which gets the
# server's environment.
THREADS_ENV = "OPENPI_TRITON_ORT_THREADS"
# Whether ONNX Runtime's idle workers spin-wait for the next run (its default) or sleep (ours): the core
# shares its cores with the front and the python-backend preprocess, which spinning workers starve.
SPINNING_ENV = "OPENPI_TRITON_ORT_SPINNING"
# Whether batches with a row per thread are split into one-thread shards (see OnnxRuntimeCore).
SPLIT_ENV = "OPENPI_TRITON_ORT_SPLIT"

Core = Callable[[Mapping[str, np.ndarray]], np.ndarray]


class OnnxRuntimeCore:
    """`model.onnx` in ONNX Runtime CPU sessions: core inputs (`spec.CORE_INPUTS`) -> actions.

    A batch with at least one row per thread is split into one shard per thread, each run by a
    one-thread session of its own, all in parallel (ONNX Runtime releases the GIL). Threads sharing one
    run meet at a barrier after every operator and wait for whichever one the OS descheduled, which on a
    machine whose cores the front and the preprocess share is often; shards never wait for each other.
    Smaller batches (a lone robot) run on every thread together, for the shortest latency. The shards
    cost one more copy of the weights per thread; `OPENPI_TRITON_ORT_SPLIT=0` turns them off."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `openpi-triton export` to create it")
        threads = int(os.environ.get(THREADS_ENV, "0")) if threads is None else threads
        spinning = _switch(SPINNING_ENV, "0")
        split = _switch(SPLIT_ENV, "1")

        def session(intra_op_threads: int) -> Any:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = intra_op_threads
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
            return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        self.session = session(threads)
        self.input_names = list(spec.CORE_INPUTS)
        shards = (threads or len(os.sched_getaffinity(0))) if split == "1" else 1
        self.shard_sessions = [session(1) for _ in range(shards)] if shards > 1 else []
        self._shard_pool = ThreadPoolExecutor(shards, "onnxruntime-shard") if self.shard_sessions else None

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {name: inputs[name] for name in self.input_names}
        rows = len(feeds[self.input_names[0]])
        shards = len(self.shard_sessions)
        if self._shard_pool is None or rows < shards:
            return _run(self.session, feeds)
        bounds = [rows * shard // shards for shard in range(shards + 1)]
        parts = self._shard_pool.map(
            lambda shard: _run(self.shard_sessions[shard],
                               {name: value[bounds[shard]:bounds[shard + 1]] for name, value in feeds.items()}),
            range(shards))
        return np.concatenate(list(parts))


def _run(session: Any, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    (actions,) = session.run(["actions"], dict(feeds))
    return actions


def _switch(name: str, default: str) -> str:
    value = os.environ.get(name, default)
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value


def load_core(config: Mapping[str, Any], onnx_path: Path, device: str | None = None,
              threads: int | None = None) -> Core:
    """The core a policy core config describes. `device` (torch runtime): "cuda:0", "cpu"; default: where
    the config's instances run. `onnx_path` and `threads`: the ONNX Runtime core's file and threads."""
    settings = core_settings(config)
    if settings is None:
        return OnnxRuntimeCore(onnx_path, threads)
    from openpi_policy.torch_core import build_torch_core

    return build_torch_core(settings, device or config_device(config), int(config.get("max_batch_size", 0)) or 1)
