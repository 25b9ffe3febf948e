"""The whole policy in one process: the same preprocess and postprocess as the Triton python models,
and ONNX Runtime on the same `model.onnx`. It is the reference the Triton ensemble is tested
against, and the policy that OpenPI's reference server serves in the benchmarks.

`openpi_triton.triton.repository.load_reference_pipeline` builds one from a model repository."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from openpi_policy.pipeline import Postprocessor, Preprocessor

Core = Callable[[Mapping[str, np.ndarray]], np.ndarray]


class ReferencePipeline:
    """preprocess -> policy core -> postprocess for one robot format."""

    def __init__(self, preprocessor: Preprocessor, core: Core, postprocessor: Postprocessor) -> None:
        self.preprocessor, self.core, self.postprocessor = preprocessor, core, postprocessor

    def core_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ensemble-input arrays (each with a batch axis) -> the policy core's tensors."""
        return self.preprocessor([inputs])

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.postprocessor(self.core(self.core_inputs(inputs)))
