"""A model repository on disk, read the way Triton reads it: config.pbtxt files (in the JSON form that
Triton's `get_model_config(as_json=True)` returns) and the policies they declare. The in-process reference
pipeline of a format, which needs the policy runtime, is `triton.reference`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openpi_policy.core_config import core_settings
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


def config_names(model_repository: Path) -> list[str]:
    """The config variants some model of a repository has (`configs/<name>.pbtxt`)."""
    return sorted({path.stem for path in Path(model_repository).glob("*/configs/*.pbtxt")})


def core_needs_onnx(model_repository: Path, config_name: str) -> bool:
    """Whether the policy core that `--model-config-name=<config_name>` serves runs model.onnx (ONNX Runtime)
    rather than a network built from code (PyTorch)."""
    core_dir = Path(model_repository) / "policy_core"
    return not core_dir.is_dir() or core_settings(read_model_config(config_path(core_dir, config_name))) is None
