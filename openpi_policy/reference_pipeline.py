"""The whole policy in one process: the same preprocess as the Triton python model and ONNX Runtime on
the same `model.onnx`, so it returns what the ensemble returns (the core's un-normalised [B, 50, 32]
actions; the robot's slice of them is the front's `unbatch`, applied to both alike). It is the
reference the Triton ensemble is tested against, and the policy that OpenPI's reference server serves
in the benchmarks.

`openpi_triton.triton.reference.load_reference_pipeline` builds one from a model repository."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from openpi_policy.pipeline import Preprocessor

Core = Callable[[Mapping[str, np.ndarray]], np.ndarray]


class ReferencePipeline:
    """preprocess -> policy core for one robot format."""

    def __init__(self, preprocessor: Preprocessor, core: Core) -> None:
        self.preprocessor, self.core = preprocessor, core

    def core_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ensemble-input arrays (each with a batch axis) -> the policy core's tensors."""
        return self.preprocessor([inputs])

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.core(self.core_inputs(inputs))
