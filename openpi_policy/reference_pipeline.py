"""The whole policy in one process: the same preprocess and postprocess as the Triton python models,
and ONNX Runtime on the same `model.onnx`. It is the reference the Triton ensemble is tested
against, and the policy that OpenPI's reference server serves in the benchmarks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from openpi_policy import spec
from openpi_policy.pipeline import PostprocessConfig, Postprocessor, PreprocessConfig, Preprocessor


def read_model_config(config_pbtxt: Path) -> Any:
    """Parse a config.pbtxt into Triton's ModelConfig protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config_pbtxt.read_text(), model_config_pb2.ModelConfig())


def config_parameters(config_pbtxt: Path) -> dict[str, str]:
    """The string parameters of a config.pbtxt (the JSON our models carry)."""
    return {key: p.string_value for key, p in read_model_config(config_pbtxt).parameters.items()}


def onnx_session(model_path: Path, threads: int = 0) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class ReferencePipeline:
    """preprocess -> ONNX Runtime -> postprocess for one format of a model repository."""

    def __init__(self, model_repository: Path, policy: str, session: Any | None = None) -> None:
        repo = Path(model_repository)
        pre_dir, post_dir = repo / f"{policy}_preprocess", repo / f"{policy}_postprocess"
        self.preprocessor = Preprocessor(
            PreprocessConfig.from_json(config_parameters(pre_dir / "config.pbtxt")["preprocess"], pre_dir)
        )
        self.postprocessor = Postprocessor(
            PostprocessConfig.from_json(config_parameters(post_dir / "config.pbtxt")["postprocess"], post_dir)
        )
        self.session = session or onnx_session(repo / "policy_core" / "1" / "model.onnx")
        self.metadata: dict[str, Any] = json.loads(
            config_parameters(repo / policy / "config.pbtxt").get("policy_server_config", "{}")
        )

    def core_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ensemble-input arrays (each with a batch axis) -> the policy core's tensors."""
        return self.preprocessor([inputs])

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        core = self.core_inputs(inputs)
        (actions,) = self.session.run(["actions"], {name: core[name] for name in spec.CORE_INPUTS})
        return self.postprocessor(actions)
