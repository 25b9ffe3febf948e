"""The policy core in PyTorch (`configs/gpu_torch.pbtxt`) as a library, on the CPU: it computes what
model.onnx computes, batches requests through its static buffers without mixing their rows, and its
settings are checked where they are read. The CUDA graphs themselves need a GPU (benchmarks/gpu_fleet.py
checks them there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openpi_policy.core import OnnxRuntimeCore, load_core
from openpi_policy.core_config import config_device, core_settings
from openpi_policy.export import example_inputs
from openpi_policy.reference_model import build_reference_policy
from openpi_policy.torch_core import FP16_TOLERANCE, TorchCore, build_torch_core
from openpi_triton.config import GPU_TORCH_CONFIG_NAME
from openpi_triton.triton.repository import config_path, read_model_config

from .conftest import MODEL_REPOSITORY

GPU_TORCH_CONFIG = read_model_config(config_path(MODEL_REPOSITORY / "policy_core", GPU_TORCH_CONFIG_NAME))


@pytest.fixture(scope="module")
def onnx(model_onnx) -> OnnxRuntimeCore:
    return OnnxRuntimeCore(model_onnx)


def _requests(sizes: list[int], seed: int = 3) -> list[dict[str, np.ndarray]]:
    """Requests of different sizes and contents (norm tables not the identity)."""
    requests = []
    for i, size in enumerate(sizes):
        inputs = example_inputs(size, seed + i)
        inputs["state_norm"][:, 1] = 2.0 + i
        inputs["action_norm"][:, 0] = 0.5 * i
        inputs["image_masks"][:, 2] = False
        requests.append(inputs)
    return requests


def _torch(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value) for name, value in inputs.items()}


def test_the_gpu_config_builds_the_reference_network_in_float16_with_graphs():
    settings = core_settings(GPU_TORCH_CONFIG)
    assert settings is not None and settings.precision == "float16" and settings.cuda_graphs
    assert config_device(GPU_TORCH_CONFIG) == "cuda" and GPU_TORCH_CONFIG["max_batch_size"] == 64
    assert core_settings(read_model_config(MODEL_REPOSITORY / "policy_core" / "configs" / "cpu.pbtxt")) is None


def test_a_cpu_instance_of_the_gpu_config_runs_what_model_onnx_runs(onnx):
    core = build_torch_core(core_settings(GPU_TORCH_CONFIG), "cpu", GPU_TORCH_CONFIG["max_batch_size"])
    assert "float32" in core.description and "no CUDA graphs" in core.description
    inputs = _requests([3])[0]
    np.testing.assert_allclose(core(inputs), onnx(inputs), atol=1e-4, rtol=0)


def test_float16_stays_within_the_tolerance_the_gpu_is_held_to(onnx):
    core = TorchCore(build_reference_policy(), torch.device("cpu"), torch.float16, max_batch=2)
    inputs = _requests([2])[0]
    half, full = core(inputs), onnx(inputs)
    np.testing.assert_allclose(half, full, **FP16_TOLERANCE)
    assert not np.array_equal(half, full)  # it did run in float16


def test_requests_share_one_padded_batch_and_each_gets_its_own_rows(onnx):
    # Static batch sizes on the CPU: the path CUDA graphs take (buffers, padding), without the capture.
    core = TorchCore(build_reference_policy(), torch.device("cpu"), max_batch=8, static_batches=(1, 4))
    assert core.batches == (1, 4, 8)
    requests = _requests([1, 2])  # 3 rows run in the batch-4 buffers
    actions = core.run([_torch(r) for r in requests])
    assert actions.shape == (3, 50, 32) and actions.dtype == torch.float32
    np.testing.assert_allclose(actions[:1].numpy(), onnx(requests[0]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(actions[1:].numpy(), onnx(requests[1]), atol=1e-4, rtol=0)
    # A smaller batch next: the rows left from the larger one neither leak into it nor change it.
    alone = core.run([_torch(requests[0])])
    np.testing.assert_allclose(alone.numpy(), actions[:1].numpy(), atol=1e-5, rtol=0)


def test_more_rows_than_the_core_holds(onnx):
    core = TorchCore(build_reference_policy(), torch.device("cpu"), max_batch=2, static_batches=(1, 2))
    inputs = _requests([5])[0]
    with pytest.raises(ValueError, match="5 rows in one batch, but the core holds 2"):
        core.run([_torch(inputs)])
    np.testing.assert_allclose(core(inputs), onnx(inputs), atol=1e-4, rtol=0)  # in-process: in chunks


@pytest.mark.parametrize("parameter, message", [
    ('{"runtime": "tensorflow"}', "runtime 'tensorflow'"),
    ('{"runtime": "torch", "precision": "float8"}', "precision 'float8'"),
    ('{"runtime": "torch", "graphs": true}', r"unknown torch core settings \['graphs'\]"),
    ('{"runtime": "torch", "graph_batches": [0, 4]}', "graph_batches"),
    ('{"runtime": "torch", "network": "build_reference_policy"}', "module:function"),
    ('{"runtime": "torch"', "parameter 'core'"),
])
def test_bad_core_settings_are_named(parameter, message):
    config = {"parameters": {"core": {"string_value": parameter}}}
    with pytest.raises(ValueError, match=message):
        core_settings(config)


def test_load_core_picks_the_runtime_of_the_config(model_onnx):
    cpu = read_model_config(MODEL_REPOSITORY / "policy_core" / "configs" / "cpu.pbtxt")
    assert isinstance(load_core(cpu, model_onnx), OnnxRuntimeCore)
    assert isinstance(load_core(GPU_TORCH_CONFIG, model_onnx, device="cpu"), TorchCore)
