"""The policy core's runtimes, chosen by the `core` parameter of its model config, and shared by the Triton
python model and the in-process reference pipeline, so both run the network with the same settings:

- ONNX Runtime on `model.onnx` on the CPU (`configs/cpu.pbtxt`; the default, without the parameter);
- PyTorch (`configs/gpu_torch.pbtxt`: `{"runtime": "torch", ...}`), on CUDA in float16 with CUDA graphs,
  see `openpi_policy.torch_core`. Only this runtime imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openpi_policy import spec

# Threads of one ONNX Runtime run; 0 = one per core. Read inside Triton's python stub, which gets the
# server's environment.
THREADS_ENV = "OPENPI_TRITON_ORT_THREADS"
# Whether ONNX Runtime's idle workers spin-wait for the next run (its default) or sleep (ours): the core
# shares its cores with the front and the python-backend preprocess, which spinning workers starve.
SPINNING_ENV = "OPENPI_TRITON_ORT_SPINNING"
CORE_PARAMETER = "core"
RUNTIMES = ("onnxruntime", "torch")
PRECISIONS = ("float32", "float16", "bfloat16")
REFERENCE_NETWORK = "openpi_policy.reference_model:build_reference_policy"

Core = Callable[[Mapping[str, np.ndarray]], np.ndarray]


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


@dataclass(frozen=True)
class TorchCoreSettings:
    """The `core` parameter with `"runtime": "torch"` (JSON in the policy core's model config)."""

    # "module:function" returning the network with openpi's float interface (what ServingPolicy wraps),
    # called without arguments; the reference policy's weights are seeded, the same as in model.onnx.
    network: str = REFERENCE_NETWORK
    # The network's dtype on CUDA (the serving steps stay float32). A CPU instance runs float32: PyTorch
    # emulates float16 on the CPU, five times slower.
    precision: str = "float16"
    # On CUDA, one CUDA graph per batch size in `graph_batches` (default: every size up to the config's
    # max_batch_size); a batch of another size runs in the next larger graph.
    cuda_graphs: bool = True
    graph_batches: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TorchCoreSettings:
        raw = {key: value for key, value in raw.items() if key != "runtime"}
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown torch core settings {unknown}; known: "
                             f"{', '.join(sorted(cls.__dataclass_fields__))}")
        if raw.get("graph_batches") is not None:
            raw["graph_batches"] = tuple(int(b) for b in raw["graph_batches"])
        settings = cls(**raw)
        if settings.precision not in PRECISIONS:
            raise ValueError(f"precision {settings.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if settings.graph_batches is not None and (not settings.graph_batches or min(settings.graph_batches) < 1):
            raise ValueError(f"graph_batches {list(settings.graph_batches)}: list batch sizes from 1 up")
        if ":" not in settings.network:
            raise ValueError(f"network {settings.network!r}: write it as 'module:function'")
        return settings


def core_settings(config: Mapping[str, Any]) -> TorchCoreSettings | None:
    """The runtime a policy core config asks for: None for ONNX Runtime on model.onnx, else the torch
    settings. Raises ValueError, naming the parameter, for what does not parse."""
    text = config.get("parameters", {}).get(CORE_PARAMETER, {}).get("string_value")
    if text is None:
        return None
    try:
        raw = json.loads(text)
        runtime = raw.get("runtime", "onnxruntime")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        return None if runtime == "onnxruntime" else TorchCoreSettings.from_dict(raw)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"parameter {CORE_PARAMETER!r}: {error}") from None


def config_device(config: Mapping[str, Any]) -> str:
    """Where a config's instances run: "cuda" for KIND_GPU instance groups, else "cpu"."""
    kinds = {group.get("kind") for group in config.get("instance_group", [])}
    return "cuda" if "KIND_GPU" in kinds else "cpu"


def load_core(config: Mapping[str, Any], onnx_path: Path, device: str | None = None,
              threads: int | None = None) -> Core:
    """The core a policy core config describes. `device` (torch runtime): "cuda:0", "cpu"; default: where
    the config's instances run. `onnx_path` and `threads`: the ONNX Runtime core's file and threads."""
    settings = core_settings(config)
    if settings is None:
        return OnnxRuntimeCore(onnx_path, threads)
    from openpi_policy.torch_core import build_torch_core

    return build_torch_core(settings, device or config_device(config), int(config.get("max_batch_size", 0)) or 1)
