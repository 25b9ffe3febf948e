"""The model repository served by a real tritonserver on CPU (integration)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openpi_triton.front.observations import unbatch
from openpi_triton.triton.embedded import EmbeddedTriton
from openpi_triton.triton.grpc_tensors import infer_inputs
from openpi_triton.triton.reference import load_reference_pipeline
from openpi_triton.triton.repository import policy_from_repository

from .conftest import MODEL_REPOSITORY, settled_statistics
from .waiting import run_threads

pytestmark = pytest.mark.integration

def libero_inputs(seed: int = 0, batch: int = 1, wrist_shape=(224, 224, 3)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (batch, *wrist_shape), dtype=np.uint8),
        "state": rng.normal(size=(batch, 8)).astype(np.float32),
        "prompt": np.array([[b"put the bowl on the plate"]] * batch, dtype=object),
        "seed": np.full((batch, 1), seed, np.int64),
    }


@pytest.fixture(scope="module")
def client(triton: EmbeddedTriton) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(triton.grpc_url)


def test_every_model_is_ready(client):
    names = {m.name for m in client.get_model_repository_index().models}
    assert {"libero", "libero_preprocess", "policy_core"} <= names
    for name in ("libero", "libero_preprocess", "policy_core"):
        assert client.is_model_ready(name), name
    # The CPU configuration was picked: the policy core runs in the python backend.
    assert client.get_model_config("policy_core").config.backend == "python"


def test_ensemble_returns_the_core_chunk_and_the_policy_slices_libero_actions(client):
    actions = client.infer("libero", infer_inputs(libero_inputs())).as_numpy("actions")
    assert actions.shape == (1, 50, 32) and actions.dtype == np.float32
    assert np.isfinite(actions).all()
    response = unbatch(policy_from_repository(MODEL_REPOSITORY, "libero"), {"actions": actions})
    np.testing.assert_array_equal(response["actions"], actions[0, :10, :7])


@pytest.mark.parametrize("wrist_shape", [(224, 224, 3), (480, 640, 3)])
def test_ensemble_equals_the_in_process_pipeline(client, model_onnx, wrist_shape):
    inputs = libero_inputs(seed=11, wrist_shape=wrist_shape)
    served = client.infer("libero", infer_inputs(inputs)).as_numpy("actions")
    expected = load_reference_pipeline(MODEL_REPOSITORY, "libero")(inputs)
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


def test_same_seed_same_actions_other_seed_other_actions(client):
    first = client.infer("libero", infer_inputs(libero_inputs(seed=5))).as_numpy("actions")
    again = client.infer("libero", infer_inputs(libero_inputs(seed=5))).as_numpy("actions")
    inputs = libero_inputs(seed=5)
    inputs["seed"][:] = 6
    other = client.infer("libero", infer_inputs(inputs)).as_numpy("actions")
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_concurrent_requests_are_batched_in_the_policy_core(client, triton):
    before = settled_statistics(client, "policy_core")
    clients = [grpcclient.InferenceServerClient(triton.grpc_url) for _ in range(16)]
    try:
        run_threads([lambda seed=seed: clients[seed].infer("libero", infer_inputs(libero_inputs(seed)))
                     for seed in range(16)])
    finally:
        for own in clients:
            own.close()
    after = settled_statistics(client, "policy_core", before.inference_count + 16)
    assert after.inference_count - before.inference_count == 16
    assert after.execution_count - before.execution_count < 16, "16 concurrent requests ran as 16 separate executions"


@pytest.mark.parametrize(
    "name, bad",
    [("state", np.zeros((1, 9), np.float32)), ("state", np.zeros((1, 8), np.float64)),
     ("image", np.zeros((1, 224, 224, 3), np.float32))],
)
def test_wrong_shape_or_dtype_gets_a_triton_error_and_the_server_stays_up(client, name, bad):
    inputs = libero_inputs()
    inputs[name] = bad
    with pytest.raises(InferenceServerException, match=name):
        client.infer("libero", infer_inputs(inputs))
    assert client.is_server_live() and client.is_model_ready("libero")
    assert client.infer("libero", infer_inputs(libero_inputs())).as_numpy("actions").shape == (1, 50, 32)
