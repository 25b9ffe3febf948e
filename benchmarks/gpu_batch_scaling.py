"""What batching buys on a GPU: the reference policy's network (same code, same seeded weights as
`model.onnx`) in PyTorch on CUDA, timed per batch size with CUDA events.

This is PyTorch eager (and CUDA-graph replay), not the TensorRT plan Triton serves on a GPU host;
it shows the shape of the curve (time per batch against batch size), not TensorRT's figures.

    python -m benchmarks.gpu_batch_scaling [--batches 1,2,4,8,16,32,64] [--dtype float32]
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from typing import Any


def time_batches(batches: Sequence[int], dtype_name: str = "float32", runs: int = 50) -> dict[str, Any]:
    import torch

    from openpi_policy.export import example_inputs
    from openpi_policy.reference_model import build_reference_policy

    device = torch.device("cuda")
    dtype = getattr(torch, dtype_name)
    model = build_reference_policy(0).to(device=device, dtype=dtype)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "dtype": dtype_name, "batches": {}}
    for batch in batches:
        inputs = [torch.from_numpy(value).to(device) for value in example_inputs(batch).values()]
        inputs = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
        entry = {}
        with torch.inference_mode():
            for _ in range(5):
                model(*inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(*inputs)
            for mode, call in (("eager", functools.partial(model, *inputs)), ("cuda_graph", graph.replay)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                for _ in range(runs):
                    call()
                end.record()
                torch.cuda.synchronize()
                run_ms = start.elapsed_time(end) / runs
                entry[mode] = {"run_ms": run_ms, "ms_per_sample": run_ms / batch}
        results["batches"][batch] = entry
    return results


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
