"""The policy core's `core` parameter (JSON in its model config): which runtime runs the network, and the
PyTorch runtime's settings. Plain Python, no runtime imported: the server's checks read it too."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CORE_PARAMETER = "core"
RUNTIMES = ("onnxruntime", "torch")
PRECISIONS = ("float32", "float16", "bfloat16")
REFERENCE_NETWORK = "openpi_policy.reference_model:build_reference_policy"


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
