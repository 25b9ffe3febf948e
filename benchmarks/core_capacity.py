"""The ceiling every row is under: the policy core alone in-process (ONNX Runtime on model.onnx, or the
PyTorch core of the GPU configuration), back to back, per batch size.

Per-sample time at the best batch size bounds the throughput of any server of this model on this
machine, whatever it does around the model (1000 / best ms-per-sample answers per second).

Batch sizes take turns within each round, and every timing covers the same number of samples, so a
machine whose speed drifts from minute to minute (this development VM's does, by up to a third) slows
every batch size alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openpi_policy.core import Core
from openpi_triton.config import DEFAULT_MODEL_REPOSITORY, core_onnx_path


def core_capacity(core: Core, batches: Sequence[int] = (1, 2, 4, 8, 16), rounds: int = 5) -> dict[str, Any]:
    """Median ms per run and per sample for each batch size of the policy core (NumPy inputs in, NumPy
    actions out: for the PyTorch core on a GPU, the copies to and from it included), and the best
    answers/s that allows."""
    from openpi_policy.export import example_inputs

    samples = max(batches)
    inputs = {batch: example_inputs(batch) for batch in batches}
    for batch in batches:
        core(inputs[batch])  # allocations for this shape happen once, outside the timing
    per_sample_ms: dict[int, list[float]] = {batch: [] for batch in batches}
    for _ in range(rounds):
        for batch in batches:
            runs = -(-samples // batch)
            started = time.perf_counter()
            for _ in range(runs):
                core(inputs[batch])
            per_sample_ms[batch].append((time.perf_counter() - started) * 1000 / (runs * batch))
    per_batch = {}
    for batch, times in per_sample_ms.items():
        ms_per_sample = float(np.median(times))
        per_batch[batch] = {"run_ms": ms_per_sample * batch, "ms_per_sample": ms_per_sample}
    best = min(per_batch, key=lambda b: per_batch[b]["ms_per_sample"])
    return {"batches": per_batch, "best_batch": best,
            "max_answers_per_s": 1000 / per_batch[best]["ms_per_sample"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-onnx", type=Path, default=core_onnx_path(DEFAULT_MODEL_REPOSITORY))
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all batch sizes (median reported)")
    args = parser.parse_args(argv)
    from openpi_policy.core import OnnxRuntimeCore

    print(json.dumps(core_capacity(OnnxRuntimeCore(args.model_onnx), rounds=args.rounds), indent=1))


if __name__ == "__main__":
    main()
