"""Export the reference policy, inside the serving wrapper, to ONNX (dynamic batch): the file the policy
core serves."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np

from openpi_policy import spec

DEFAULT_OPSET = 17


def identity_norm(batch: int, dim: int) -> np.ndarray:
    """A norm table that leaves values as they are: center 0, scale 1 (`spec.NORM_ROWS`)."""
    table = np.zeros((batch, len(spec.NORM_ROWS), dim), np.float32)
    table[:, spec.NORM_ROWS.index("scale")] = 1.0
    return table


def example_inputs(batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs with the policy core's names, dtypes and shapes (norm tables: identity)."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for name, (dtype, shape) in spec.CORE_INPUTS.items():
        full = (batch, *shape)
        if name in spec.NORM_INPUTS:
            inputs[name] = identity_norm(batch, shape[-1])
        elif dtype == "bool":
            inputs[name] = np.ones(full, bool)
        elif dtype == "uint8":
            inputs[name] = rng.integers(0, 256, full, dtype=np.uint8)
        elif dtype == "int64":
            inputs[name] = rng.integers(2, 200, full, dtype=np.int64)
        else:
            inputs[name] = rng.standard_normal(full).astype(np.float32)
    return inputs


def export_reference_policy(output: Path, seed: int = 0, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model.onnx` for the reference policy with seeded weights; returns its path."""
    import torch

    from openpi_policy.reference_model import build_reference_policy
    from openpi_policy.serving import ServingPolicy

    model = ServingPolicy(build_reference_policy(seed)).eval()
    names = list(spec.CORE_INPUTS)
    # torch.onnx passes the example positionally: the wrapper's parameters must be the spec's names.
    parameters = list(inspect.signature(model.forward).parameters)
    if parameters != names:
        raise TypeError(f"ServingPolicy.forward takes {parameters}, spec.CORE_INPUTS is {names}")
    example = tuple(torch.from_numpy(value) for value in example_inputs(batch=2).values())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".onnx.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            example,
            str(tmp),
            input_names=names,
            output_names=list(spec.CORE_OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in [*names, *spec.CORE_OUTPUTS]},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    tmp.replace(output)  # atomic: a half-written model.onnx is never served
    return output
