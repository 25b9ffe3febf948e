"""LIBERO, DROID and ALOHA as routed policies sharing one policy core (integration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from openpi_client import image_tools
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_policy.tokenizer import ByteTokenizer
from openpi_triton.example_observations import aloha, droid, libero
from openpi_triton.triton.grpc_tensors import infer_inputs

from .conftest import MODEL_REPOSITORY, settled_statistics
from .waiting import run_threads

pytestmark = pytest.mark.integration

ROUTE = "/v1/realtime/robot/openpi/"
EXPECTED = {"libero": (10, 7), "droid": (15, 8), "aloha": (50, 14)}


@pytest.mark.parametrize(
    "name, observation",
    [
        ("libero", libero(np.random.default_rng(0))),
        ("droid", droid(np.random.default_rng(0))),
        ("droid", droid(np.random.default_rng(0), raw_frames=True)),
        ("aloha", aloha(np.random.default_rng(0))),
        ("aloha", aloha(np.random.default_rng(0), real_robot=True)),
    ],
    ids=["libero", "droid", "droid-480x640", "aloha-sim", "aloha-real"],
)
def test_example_client_observations_get_documented_actions(front, name, observation, open_robot):
    result = open_robot(front, ROUTE + name).infer(observation)
    assert result["actions"].shape == EXPECTED[name]
    assert result["actions"].dtype == np.float32 and np.isfinite(result["actions"]).all()


def test_aloha_handshake_carries_the_reset_pose(front, open_robot):
    assert open_robot(front, ROUTE + "aloha").get_server_metadata() == {"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}


def test_wrong_format_names_the_missing_keys(front, open_robot):
    with pytest.raises(RuntimeError) as error:
        open_robot(front, ROUTE + "libero").infer(droid(np.random.default_rng(0)))
    message = str(error.value)
    assert "'observation/image'" in message and "'observation/state'" in message
    assert "'observation/wrist_image'" in message


def test_three_formats_are_batched_together_in_the_policy_core(front, triton, open_robot):
    client = grpcclient.InferenceServerClient(triton.grpc_url)

    def executions(inferences: int = 0) -> tuple[int, int, dict[int, int]]:
        stats = settled_statistics(client, "policy_core", inferences)
        batches = {b.batch_size: b.compute_infer.count for b in stats.batch_stats}
        return stats.execution_count, stats.inference_count, batches

    builders = {"libero": libero, "droid": droid, "aloha": aloha}
    per_format = 5
    robots = [(name, open_robot(front, ROUTE + name)) for name in builders for _ in range(per_format)]
    before = executions()

    def run(name: str, robot: WebsocketClientPolicy) -> tuple[int, ...]:
        return robot.infer(builders[name](np.random.default_rng(1)))["actions"].shape

    shapes = run_threads([lambda robot=robot: run(*robot) for robot in robots])
    after = executions(before[1] + len(robots))
    assert sorted(shapes) == sorted(EXPECTED[name] for name, _ in robots)
    assert after[1] - before[1] == len(robots)
    assert after[0] - before[0] < len(robots), "requests from different robots were not batched"
    # A policy-core batch larger than one format's share must hold requests of two formats or more.
    sizes = [size for size, runs in after[2].items() if runs > before[2].get(size, 0)]
    assert max(sizes) > per_format, f"no batch mixed formats (batch sizes {sorted(sizes)})"


# --- the preprocess models against an independent in-process reference -----------------------------


def norm_stats(name: str) -> dict:
    return json.loads((MODEL_REPOSITORY / name / "norm_stats.json").read_text())["norm_stats"]


def expected_frame(frame_hwc: np.ndarray) -> np.ndarray:
    return image_tools.resize_with_pad(frame_hwc, 224, 224)  # openpi's own implementation


def expected_tokens(prompt: str) -> np.ndarray:
    ids = [1] + [b + 2 for b in prompt.encode()] + [ord("\n") + 2]
    return np.array(ids + [0] * (48 - len(ids)))


def normalised_state(out: dict[str, np.ndarray]) -> np.ndarray:
    """What the core graph makes of the preprocess's raw state and its norm table."""
    center, scale = out["state_norm"]
    return (out["state"] - center) / scale


def run_preprocess(triton, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    result = client.infer(model, infer_inputs(inputs))
    names = ("images", "image_masks", "state", "state_norm", "tokens", "token_mask", "action_norm")
    return {name: result.as_numpy(name)[0] for name in names}


def test_droid_preprocess_resizes_raw_frames_like_openpi(triton):
    obs = droid(np.random.default_rng(4), raw_frames=True)
    out = run_preprocess(triton, "droid_preprocess", {
        "exterior_image_1_left": obs["observation/exterior_image_1_left"][None],
        "wrist_image_left": obs["observation/wrist_image_left"][None],
        "joint_position": obs["observation/joint_position"][None].astype(np.float32),
        "gripper_position": obs["observation/gripper_position"][None].astype(np.float32),
        "prompt": np.array([[obs["prompt"].encode()]], dtype=object),
        "seed": np.array([[0]], np.int64),
    })
    assert out["images"].dtype == np.uint8 and out["images"].shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(out["images"][0], expected_frame(obs["observation/exterior_image_1_left"]))
    np.testing.assert_array_equal(out["images"][1], expected_frame(obs["observation/wrist_image_left"]))
    assert out["image_masks"].tolist() == [True, True, False] and not out["images"][2].any()

    stats = norm_stats("droid")
    state = np.concatenate([obs["observation/joint_position"], obs["observation/gripper_position"]])
    np.testing.assert_array_equal(out["state"][:8], state.astype(np.float32))  # raw: the core normalises
    q01, q99 = np.array(stats["state"]["q01"]), np.array(stats["state"]["q99"])
    normalised = normalised_state(out)
    np.testing.assert_allclose(normalised[:8], (state - q01) / (q99 - q01 + 1e-6) * 2 - 1, atol=1e-5)
    assert not normalised[8:].any()
    np.testing.assert_array_equal(out["tokens"], expected_tokens(obs["prompt"]))

    # The action table inverts the quantile normalisation of the 8 DROID action dims (-1 -> q01, 1 -> q99)
    # and leaves the padding dims as they are.
    center, scale = out["action_norm"]
    q01, q99 = np.array(stats["actions"]["q01"]), np.array(stats["actions"]["q99"])
    np.testing.assert_allclose(center[:8] - scale[:8], q01, atol=1e-5)
    np.testing.assert_allclose(center[:8] + scale[:8], q99, atol=1e-5)
    assert (center[8:] == 0).all() and (scale[8:] == 1).all()


@pytest.mark.parametrize(("sent", "expected"), [("", "Transfer cube"), ("fold the towel", "fold the towel")],
                         ids=["no-prompt-gets-the-default", "a-sent-prompt-wins"])
def test_aloha_preprocess_takes_chw_frames_and_injects_the_default_prompt(triton, sent, expected):
    obs = aloha(np.random.default_rng(5))
    cam_high = obs["images"]["cam_high"]
    empty = np.zeros((1, 3, 0, 0), np.uint8)  # what the front sends for an absent wrist camera
    out = run_preprocess(triton, "aloha_preprocess", {
        "cam_high": cam_high[None], "cam_left_wrist": empty, "cam_right_wrist": empty,
        "state": obs["state"][None].astype(np.float32),
        "prompt": np.array([[sent.encode()]], dtype=object),  # "" is what the front sends for no prompt
        "seed": np.array([[0]], np.int64),
    })
    np.testing.assert_array_equal(out["images"][0], cam_high.transpose(1, 2, 0))  # CHW -> the core's HWC
    assert out["image_masks"].tolist() == [True, False, False] and not out["images"][1:].any()

    stats = norm_stats("aloha")["state"]
    zscore = (obs["state"] - np.array(stats["mean"])) / (np.array(stats["std"]) + 1e-6)
    np.testing.assert_allclose(normalised_state(out)[:14], zscore, atol=1e-5)
    np.testing.assert_array_equal(out["tokens"], expected_tokens(expected))
    assert out["token_mask"].sum() == len(ByteTokenizer().encode(expected)) + 2
