"""LeRobot checkpoints served through a real tritonserver, driven by stock clients, compared with LeRobot run
in-process (its own `from_pretrained`, `make_pre_post_processors`, `predict_action_chunk`) on the same
weights and the same noise (the documented seed rule)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.example_observations import droid
from openpi_triton.loadgen.gr00t import Gr00tClient
from openpi_triton.process import free_port

from .conftest import front_settings, http_get, running_front
from .lerobot_fixtures import SO100

pytestmark = pytest.mark.integration
TOLERANCE = 1e-4


class InProcess:
    """LeRobot's own API on a checkpoint, nothing of ours: the answer a served one must equal."""

    def __init__(self, path: Any, tokenizer: str | None = None) -> None:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        config = PreTrainedConfig.from_pretrained(path)
        self.policy = get_policy_class(config.type).from_pretrained(path)
        overrides = {} if tokenizer is None else {"tokenizer_processor": {"tokenizer_name": tokenizer}}
        self.pre, self.post = make_pre_post_processors(self.policy.config, pretrained_path=str(path),
                                                       preprocessor_overrides=overrides)

    def __call__(self, images: dict[str, np.ndarray], state: np.ndarray, task: str, seed: int) -> np.ndarray:
        config = self.policy.config
        batch: dict[str, Any] = {name: torch.from_numpy(frame).permute(2, 0, 1).float().div(255)[None]
                                 for name, frame in images.items()}
        batch["observation.state"] = torch.from_numpy(np.asarray(state, np.float32))[None]
        batch["task"] = [task]
        noise = torch.randn(config.chunk_size, config.max_action_dim, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            actions = self.policy.predict_action_chunk(self.pre(batch), noise=noise[None])
            return self.post(actions)[0].numpy()


@pytest.fixture(scope="module")
def front(lerobot_triton) -> Iterator[tuple[str, int]]:
    settings = front_settings(lerobot_triton, default_policy="smol", gr00t_port=free_port(),
                              gr00t_policy="smol_gr00t")
    with running_front(settings) as url:
        yield url, settings.gr00t_port


def so100_observation(seed: int, size: tuple[int, int] = (48, 64)) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"observation.images.front": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 256, (size[0] // 2 + 8, size[1], 3), dtype=np.uint8),
            "observation.state": rng.normal(size=SO100.state_dim).astype(np.float32),
            "task": ["pick up the red cube", "open the drawer"][seed % 2], "seed": 1000 + seed}


def expected(reference: InProcess, obs: dict[str, Any]) -> np.ndarray:
    images = {key: value for key, value in obs.items() if key.startswith("observation.images.")}
    return reference(images, obs["observation.state"], obs["task"], obs["seed"])


def policy_client(front: tuple[str, int], name: str) -> WebsocketClientPolicy:
    return WebsocketClientPolicy(host=f"{front[0]}/v1/realtime/robot/openpi/{name}")


@pytest.fixture(scope="module")
def so100_reference(smolvla_checkpoint) -> InProcess:
    return InProcess(smolvla_checkpoint)


def test_one_robot_gets_lerobots_actions(front, so100_reference) -> None:
    client = policy_client(front, "smol")
    lerobot = client.get_server_metadata()["lerobot"]
    assert lerobot["policy_type"] == "smolvla" and lerobot["chunk_size"] == 10
    assert lerobot["input_features"]["observation.state"] == {"type": "STATE", "shape": [6]}
    obs = so100_observation(0)
    actions = client.infer(dict(obs))["actions"]
    assert actions.shape == (10, 6) and actions.dtype == np.float32
    np.testing.assert_allclose(actions, expected(so100_reference, obs), atol=TOLERANCE, rtol=0)
    # The seed decides the noise: another seed, another answer.
    other = client.infer({**obs, "seed": 5})["actions"]
    assert np.abs(other - actions).max() > 1e-3


def test_eight_robots_at_once_are_batched_with_the_same_answers(front, lerobot_triton, so100_reference) -> None:
    observations = [so100_observation(i) for i in range(8)]
    answers: dict[int, list[np.ndarray]] = {i: [] for i in range(8)}
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=60)

    def robot(i: int) -> None:
        try:
            client = policy_client(front, "smol")
            start.wait()
            for _ in range(3):
                answers[i].append(client.infer(dict(observations[i]))["actions"])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert not errors and all(len(a) == 3 for a in answers.values())
    for i, obs in enumerate(observations):
        want = expected(so100_reference, obs)
        for got in answers[i]:
            np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    client = grpcclient.InferenceServerClient(lerobot_triton.grpc_url)
    stats = client.get_inference_statistics("smol_lerobot").model_stats[0]
    assert max(batch.batch_size for batch in stats.batch_stats) > 1


def test_policies_endpoint_lists_the_checkpoint(front) -> None:
    status, body = http_get(front[0], "/v1/policies")
    assert status == 200
    listed = json.loads(body)
    entries = listed["policies"] if isinstance(listed, dict) else listed
    smol = next(entry for entry in entries if entry["name"] == "smol")
    assert smol["metadata"]["lerobot"]["pretrained_name_or_path"].endswith("smolvla_so100")
    assert set(smol["observation"]) == {"observation.images.front", "observation.images.wrist",
                                        "observation.state", "task"}


def test_stock_openpi_client_with_droid_keys(front, droid_smolvla_checkpoint) -> None:
    reference = InProcess(droid_smolvla_checkpoint)
    client = policy_client(front, "smol_droid")
    assert client.get_server_metadata()["key_map"] == "droid"
    obs = {**droid(np.random.default_rng(3)), "seed": 42}
    actions = client.infer(dict(obs))["actions"]
    state = np.concatenate([obs["observation/joint_position"], obs["observation/gripper_position"]])
    want = reference({"observation.images.exterior": obs["observation/exterior_image_1_left"],
                      "observation.images.wrist": obs["observation/wrist_image_left"]},
                     state, obs["prompt"], 42)
    assert actions.shape == (10, 8)
    np.testing.assert_allclose(actions, want, atol=TOLERANCE, rtol=0)


def test_gr00t_n16_client_drives_a_smolvla_checkpoint(front, smolvla_checkpoint) -> None:
    rng = np.random.default_rng(4)
    observation = {"video.front": rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8),
                   "video.wrist": rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8),
                   "state.single_arm": rng.normal(size=(1, 5)).astype(np.float32),
                   "state.gripper": rng.normal(size=(1, 1)).astype(np.float32),
                   "annotation.human.task_description": "pick up the red cube"}
    with Gr00tClient("127.0.0.1", front[1], timeout_ms=120_000) as gr00t:
        modality = gr00t.get_modality_config()
        assert modality["video"]["modality_keys"] == ["front", "wrist"]
        assert modality["state"]["modality_keys"] == ["single_arm", "gripper"]
        action, _ = gr00t.get_action(observation, "n1.6", environments=2)
    arm, gripper = np.asarray(action["single_arm"]), np.asarray(action["gripper"])
    assert arm.shape == (2, 10, 5) and gripper.shape == (2, 10, 1)
    # GR00T frames carry no seed, so the noise is random: the answer is in the checkpoint's units (after
    # LeRobot's postprocessor), within a few standard deviations of the dataset's action mean.
    stats = SO100.stats()["action"]
    both = np.concatenate([arm, gripper], axis=-1)
    z = (both - stats["mean"].numpy()) / stats["std"].numpy()
    assert np.isfinite(both).all() and np.abs(z).max() < 20 and np.abs(both).max() > 1
