"""The PyTorch policy core config (`--model-config-name=gpu_torch`) served by a real tritonserver: here on
the CPU (its instance group switched to KIND_CPU, which runs float32 without CUDA graphs, since this
machine has no GPU), with no model.onnx in the repository. Its actions match the CPU ONNX path within
the float16 tolerance the GPU is held to, for every format (GR00T's so100 too), alone and batched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from openpi_policy.torch_core import FP16_TOLERANCE
from openpi_triton.config import CPU_CONFIG_NAME, GPU_TORCH_CONFIG_NAME
from openpi_triton.example_observations import FORMATS as OBSERVATION_FORMATS
from openpi_triton.example_observations import make_observations
from openpi_triton.front.codec import flatten
from openpi_triton.front.observations import observation_to_tensors
from openpi_triton.triton.embedded import EmbeddedTriton, TritonInstall
from openpi_triton.triton.grpc_tensors import infer_inputs
from openpi_triton.triton.reference import load_reference_pipeline
from openpi_triton.triton.repository import core_needs_onnx, policy_from_repository

from .conftest import MODEL_REPOSITORY, settled_statistics
from .waiting import run_threads

FORMATS = sorted(OBSERVATION_FORMATS)


@pytest.fixture(scope="module")
def client(torch_triton: EmbeddedTriton) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(torch_triton.grpc_url) as client:
        yield client


def _inputs(name: str, seed: int) -> dict[str, np.ndarray]:
    observation = flatten(make_observations(name, 1, seed)[0])  # nested keys as the front flattens them
    return observation_to_tensors(policy_from_repository(MODEL_REPOSITORY, name), observation, seed)


@pytest.fixture(scope="module")
def onnx_pipelines(model_onnx: Path) -> dict:
    return {name: load_reference_pipeline(MODEL_REPOSITORY, name, config_name=CPU_CONFIG_NAME) for name in FORMATS}


@pytest.mark.integration
def test_the_torch_core_is_served_without_model_onnx(client):
    config = client.get_model_config("policy_core", as_json=True)["config"]
    assert config["backend"] == "python" and config["max_batch_size"] == 64
    assert '"runtime": "torch"' in config["parameters"]["core"]["string_value"]
    assert all(client.is_model_ready(name) for name in ("policy_core", *FORMATS))


@pytest.mark.integration
@pytest.mark.parametrize("name", FORMATS)
def test_actions_match_the_onnx_path_for_the_same_seed(client, onnx_pipelines, name):
    inputs = _inputs(name, seed=21)
    served = client.infer(name, infer_inputs(inputs)).as_numpy("actions")
    np.testing.assert_allclose(served, onnx_pipelines[name](inputs), **FP16_TOLERANCE)


@pytest.mark.integration
def test_batched_requests_each_get_their_own_actions(client, torch_triton, onnx_pipelines):
    before = settled_statistics(client, "policy_core")
    robots = 8
    clients = [grpcclient.InferenceServerClient(torch_triton.grpc_url) for _ in range(robots)]
    try:
        actions = run_threads([lambda seed=seed: clients[seed].infer(
            "libero", infer_inputs(_inputs("libero", seed))).as_numpy("actions") for seed in range(robots)])
    finally:
        for own in clients:
            own.close()
    answers = dict(enumerate(actions))
    after = settled_statistics(client, "policy_core", before.inference_count + robots)
    assert after.execution_count - before.execution_count < robots, "no two requests shared a batch"
    for seed, actions in answers.items():
        np.testing.assert_allclose(actions, onnx_pipelines["libero"](_inputs("libero", seed)), **FP16_TOLERANCE)


def test_serve_selects_the_config_and_needs_no_onnx_for_the_torch_core(tmp_path):
    from openpi_triton.cli import build_parser
    from openpi_triton.cli.serve import settings_from_args

    settings = settings_from_args(build_parser().parse_args(["serve", "--model-config-name", "gpu_torch"]))
    assert settings.model_config_name == GPU_TORCH_CONFIG_NAME
    assert settings_from_args(build_parser().parse_args(["serve"])).model_config_name == CPU_CONFIG_NAME
    assert not core_needs_onnx(MODEL_REPOSITORY, GPU_TORCH_CONFIG_NAME)
    assert core_needs_onnx(MODEL_REPOSITORY, CPU_CONFIG_NAME)
    argv = EmbeddedTriton([MODEL_REPOSITORY], model_config_name=GPU_TORCH_CONFIG_NAME).command(
        TritonInstall(Path("/opt/tritonserver")))
    assert "--model-config-name=gpu_torch" in argv
