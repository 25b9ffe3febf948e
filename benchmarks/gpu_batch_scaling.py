"""What batching buys on a GPU: the PyTorch policy core (the reference policy's network, same code and
seeded weights as `model.onnx`), built as the Triton instance builds it, one CUDA graph per batch size;
each graph's replay timed with CUDA events (`gpu_fleet.graph_replay_ms`: the core's own graphs, no
timing of its own here).

This is PyTorch on CUDA, not the TensorRT plan Triton serves on a GPU host; it shows the shape of the
curve (time per batch against batch size), not TensorRT's figures.

    python -m benchmarks.gpu_batch_scaling [--batches 1,2,4,8,16,32,64] [--dtype float16]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from benchmarks.gpu_fleet import graph_replay_ms


def time_batches(batches: Sequence[int], dtype_name: str = "float32", runs: int = 50) -> dict[str, Any]:
    import torch

    from openpi_policy.core_config import PRECISIONS, TorchCoreSettings
    from openpi_policy.torch_core import build_torch_core

    if dtype_name not in PRECISIONS:
        raise ValueError(f"dtype {dtype_name!r}: choose one of {', '.join(PRECISIONS)}")
    settings = TorchCoreSettings(precision=dtype_name, graph_batches=tuple(batches))
    core = build_torch_core(settings, "cuda", max(batches))
    replay = graph_replay_ms(core, tuple(batches), runs) or {}
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": dtype_name,
            "batches": {batch: {"cuda_graph": {"run_ms": ms, "ms_per_sample": ms / batch}}
                        for batch, ms in replay.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    print(json.dumps(time_batches(batches, args.dtype, args.runs), indent=1))


if __name__ == "__main__":
    main()
