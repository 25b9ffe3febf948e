"""The in-process reference pipeline of a policy format, built from a model repository exactly as Triton
runs it: the policy runtime (`openpi_policy`'s preprocess and core) without a server. Benchmarks and tests
compare the served answers with it; `serve` never imports it."""

from __future__ import annotations

from pathlib import Path

from openpi_policy.core import load_core
from openpi_policy.pipeline import Preprocessor
from openpi_policy.reference_pipeline import ReferencePipeline
from openpi_triton.config import CPU_CONFIG_NAME, core_onnx_path
from openpi_triton.triton.repository import config_path, read_model_config


def load_reference_pipeline(model_repository: Path, policy: str, threads: int | None = None,
                            config_name: str = CPU_CONFIG_NAME, device: str | None = None) -> ReferencePipeline:
    """`<policy>_preprocess` -> the policy core that `--model-config-name=<config_name>` serves (ONNX Runtime
    on model.onnx, or PyTorch on `device`, by default where that config's instances run), configured
    exactly as the Triton models are. Like the ensemble, it returns the core's actions; `unbatch` with the
    policy (`policy_from_repository`) cuts the robot's slice, as the front does."""
    repo = Path(model_repository)
    pre_dir = repo / f"{policy}_preprocess"
    core_config = read_model_config(config_path(repo / "policy_core", config_name))
    return ReferencePipeline(
        Preprocessor.from_model_config(read_model_config(config_path(pre_dir, config_name)), pre_dir),
        load_core(core_config, core_onnx_path(repo), device, threads),
    )
