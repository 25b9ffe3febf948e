"""A model repository on disk, read the way Triton reads it: config.pbtxt files (in the JSON form that
Triton's `get_model_config(as_json=True)` returns), the policies they declare, and the in-process
reference pipeline of a format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openpi_policy.core import OnnxRuntimeCore
from openpi_policy.pipeline import Preprocessor
from openpi_policy.reference_pipeline import ReferencePipeline
from openpi_triton.config import core_onnx_path
from openpi_triton.triton.policy import Policy, policy_from_config


def read_model_config(path: Path) -> dict[str, Any]:
    """Parse a config.pbtxt as Triton would; protobuf's errors name the line and column."""
    from google.protobuf import text_format
    from google.protobuf.json_format import MessageToDict
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    return MessageToDict(message, preserving_proto_field_name=True)


def config_path(model_dir: Path, config_name: str | None = None) -> Path:
    """The config Triton loads for a model: `configs/<config_name>.pbtxt` when it exists, else config.pbtxt."""
    if config_name:
        variant = Path(model_dir) / "configs" / f"{config_name}.pbtxt"
        if variant.exists():
            return variant
    return Path(model_dir) / "config.pbtxt"


def policy_from_repository(model_repository: Path, policy: str) -> Policy:
    """The Policy of `<repo>/<policy>/config.pbtxt`, parsed as Triton would serve it."""
    path = Path(model_repository) / policy / "config.pbtxt"
    if not path.is_file():
        raise FileNotFoundError(f"no policy {policy!r} in {model_repository} ({path} is missing)")
    return policy_from_config(read_model_config(path))


def load_reference_pipeline(model_repository: Path, policy: str, threads: int | None = None) -> ReferencePipeline:
    """`<policy>_preprocess` -> ONNX Runtime on the policy core's model.onnx, configured exactly as the
    Triton models are. Like the ensemble, it returns the core's actions; `unbatch` with the policy
    (`policy_from_repository`) cuts the robot's slice, as the front does."""
    repo = Path(model_repository)
    pre_dir = repo / f"{policy}_preprocess"
    return ReferencePipeline(
        Preprocessor.from_model_config(read_model_config(pre_dir / "config.pbtxt"), pre_dir),
        OnnxRuntimeCore(core_onnx_path(repo), threads),
    )
