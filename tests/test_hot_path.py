"""The hot path: camera pixels cross every boundary once as uint8, the pure tensor math (pixel scaling,
state normalisation, action un-normalisation) runs inside the core graph, one python step per format,
and the robot's horizon and dims are a view the front takes. The actions must be those of the float
pipeline it replaced, for the same seed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from openpi_client import image_tools

from openpi_policy import spec
from openpi_policy.reference_model import build_reference_policy
from openpi_triton.example_observations import aloha, droid, libero
from openpi_triton.front.observations import unbatch
from openpi_triton.triton.policy import PolicyConfigError, policy_from_config
from openpi_triton.triton.repository import read_model_config

from .conftest import MODEL_REPOSITORY

TRITON_TYPES = {"uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "float32": "TYPE_FP32", "int64": "TYPE_INT64"}
ONNX_TYPES = {"uint8": onnx.TensorProto.UINT8, "bool": onnx.TensorProto.BOOL, "float32": onnx.TensorProto.FLOAT,
              "int64": onnx.TensorProto.INT64}
FORMATS = ("libero", "droid", "aloha")


def _declared(config: dict[str, Any], kind: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t["name"]: (t["data_type"], tuple(int(d) for d in t["dims"])) for t in config[kind]}


def _spec_as_triton(table: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (TRITON_TYPES[dtype], shape) for name, (dtype, shape) in table.items()}


@pytest.mark.parametrize("config", ["config.pbtxt", "configs/cpu.pbtxt"], ids=["gpu-tensorrt", "cpu-onnxruntime"])
def test_the_core_declares_the_uint8_interface_of_the_spec(config):
    core = read_model_config(MODEL_REPOSITORY / "policy_core" / config)
    assert _declared(core, "input") == _spec_as_triton(spec.CORE_INPUTS)
    assert _declared(core, "output") == _spec_as_triton(spec.CORE_OUTPUTS)
    assert _declared(core, "input")["images"] == ("TYPE_UINT8", (3, 224, 224, 3))


def test_the_onnx_takes_what_the_spec_says(model_onnx):
    graph = onnx.load(str(model_onnx), load_external_data=False).graph
    for value, (name, (dtype, shape)) in zip(graph.input, spec.CORE_INPUTS.items(), strict=True):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
        assert (value.name, value.type.tensor_type.elem_type, tuple(dims)) == (name, ONNX_TYPES[dtype], shape)


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_hands_the_core_uint8_frames_in_one_python_step(name):
    ensemble = read_model_config(MODEL_REPOSITORY / name / "config.pbtxt")
    assert [step["model_name"] for step in ensemble["ensemble_scheduling"]["step"]] == [f"{name}_preprocess",
                                                                                         "policy_core"]
    preprocess = read_model_config(MODEL_REPOSITORY / f"{name}_preprocess" / "config.pbtxt")
    assert _declared(preprocess, "output") == _spec_as_triton(spec.CORE_INPUTS)


# --- the serving graph against the float network it wraps ---------------------------------------------


def _float_network_path(network: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The pre-hot-path computation, in NumPy around the unchanged network: float CHW images scaled as
    openpi does, state normalised before the network, actions un-normalised after it."""
    images = np.moveaxis(inputs["images"].astype(np.float32) / 255.0 * 2.0 - 1.0, -1, -3).astype(np.float32)
    state_center, state_scale = inputs["state_norm"][:, 0], inputs["state_norm"][:, 1]
    state = (inputs["state"] - state_center) / state_scale
    with torch.no_grad():
        normalised = network(*(torch.from_numpy(np.ascontiguousarray(x)) for x in (
            images, inputs["image_masks"], state, inputs["tokens"], inputs["token_mask"], inputs["noise"]))).numpy()
    action_center, action_scale = inputs["action_norm"][:, :1], inputs["action_norm"][:, 1:]
    return normalised * action_scale + action_center


def test_the_serving_graph_is_the_float_pipeline_around_the_same_network(model_onnx):
    from openpi_policy.core import OnnxRuntimeCore
    from openpi_policy.export import example_inputs

    rng = np.random.default_rng(12)
    inputs = example_inputs(batch=3, seed=12)
    inputs["image_masks"][1, 2] = False
    for name in spec.NORM_INPUTS:  # tables that do something: centres far from 0, scales far from 1
        inputs[name][:, 0] = rng.normal(0, 2, inputs[name][:, 0].shape)
        inputs[name][:, 1] = rng.uniform(0.05, 2, inputs[name][:, 1].shape)
    # A raw state as a robot's would be against its own stats: about one scale from the centre.
    inputs["state"] = inputs["state_norm"][:, 0] + inputs["state_norm"][:, 1] * inputs["state"]
    served = OnnxRuntimeCore(model_onnx)(inputs)
    expected = _float_network_path(build_reference_policy(0), inputs)
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    assert np.abs(expected).max() > 1  # un-normalised: not the network's own output scale


# --- end to end: the same seed gives the same actions as before ------------------------------------


def _preprocess_settings(name: str) -> dict[str, Any]:
    config = read_model_config(MODEL_REPOSITORY / f"{name}_preprocess" / "config.pbtxt")
    return json.loads(config["parameters"]["preprocess"]["string_value"])


def _flat(observation: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in observation.items():
        flat.update(_flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _todays_actions(network: torch.nn.Module, name: str, observation: dict[str, Any], seed: int) -> np.ndarray:
    """Actions as the float pipeline made them before the hot path: every step by hand, in NumPy and the
    network in PyTorch, from the repository's settings (which observation goes where, norm stats)."""
    settings = _preprocess_settings(name)
    ensemble = read_model_config(MODEL_REPOSITORY / name / "config.pbtxt")
    params = {k: v["string_value"] for k, v in ensemble["parameters"].items()}
    by_input = {(v if isinstance(v, str) else v["input"]): k for k, v in json.loads(params["observation_map"]).items()}
    (output,) = json.loads(params["output_map"]).values()
    horizon, dim = output["slice"]
    table = json.loads((MODEL_REPOSITORY / name / "norm_stats.json").read_text())["norm_stats"]
    stats = {key: {s: np.asarray(v, np.float32) for s, v in entry.items()} for key, entry in table.items()}
    obs = _flat(observation)

    images = np.zeros((1, 3, 3, 224, 224), np.float32)  # absent cameras: float zeros, as before
    masks = np.zeros((1, 3), bool)
    for slot, camera in enumerate(settings["cameras"]):
        frame = obs.get(by_input[camera["input"]]) if camera else None
        if frame is None:
            continue
        if camera.get("layout") == "CHW":
            frame = frame.transpose(1, 2, 0)
        resized = image_tools.resize_with_pad(frame, 224, 224)
        images[0, slot] = (resized.astype(np.float32) / 255.0 * 2.0 - 1.0).transpose(2, 0, 1)
        masks[0, slot] = True

    raw = np.concatenate([np.asarray(obs[by_input[i]], np.float32).reshape(-1) for i in settings["state_inputs"]])
    s = stats["state"]
    if settings["norm_mode"] == "zscore":
        normalised = (raw - s["mean"]) / (s["std"] + 1e-6)
    else:
        normalised = (raw - s["q01"]) / (s["q99"] - s["q01"] + 1e-6) * 2.0 - 1.0
    state = np.zeros((1, 32), np.float32)
    state[0, : raw.size] = normalised

    prompt = obs.get("prompt") or settings.get("default_prompt", "")
    ids = ([1] + [b + 2 for b in prompt.strip().replace("_", " ").replace("\n", " ").encode()] + [12])[:48]
    tokens = np.zeros((1, 48), np.int64)
    tokens[0, : len(ids)] = ids
    noise = np.random.default_rng(seed).standard_normal((50, 32), dtype=np.float32)[None]

    with torch.no_grad():
        chunk = network(*(torch.from_numpy(x) for x in (images, masks, state, tokens, tokens > 0, noise))).numpy()
    y, a = chunk[0, :horizon, :dim], stats["actions"]
    if settings["norm_mode"] == "zscore":
        return y * (a["std"] + 1e-6) + a["mean"]
    return (y + 1.0) / 2.0 * (a["q99"] - a["q01"] + 1e-6) + a["q01"]


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return build_reference_policy(0)  # the seed `openpi-triton export` uses


@pytest.mark.integration
@pytest.mark.parametrize(
    "name, observation",
    [
        ("libero", libero(np.random.default_rng(20))),
        ("droid", droid(np.random.default_rng(21), raw_frames=True)),  # resized with pad on the server
        ("aloha", aloha(np.random.default_rng(22))),  # CHW, no wrist cameras, the default prompt
        ("aloha", aloha(np.random.default_rng(23), real_robot=True)),
    ],
    ids=["libero", "droid-480x640", "aloha-sim", "aloha-real"],
)
def test_actions_equal_the_float_pipeline_for_the_same_seed(front, network, name, observation, open_robot):
    seed = 4321
    robot = open_robot(front, f"/v1/realtime/robot/openpi/{name}")
    served = robot.infer({**observation, "seed": seed})["actions"]
    expected = _todays_actions(network, name, observation, seed)
    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


# --- the robot's slice of the core's actions ------------------------------------------------------------


def _ensemble_config(output_map: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "robot", "max_batch_size": 16,
        "input": [{"name": "state", "data_type": "TYPE_FP32", "dims": ["8"]}],
        "output": [{"name": "actions", "data_type": "TYPE_FP32", "dims": ["50", "32"]}],
        "parameters": {"policy_server_config": {"string_value": "{}"},
                       "observation_map": {"string_value": '{"observation/state": "state"}'},
                       "output_map": {"string_value": json.dumps(output_map)}},
    }


def test_the_robot_gets_a_view_of_its_horizon_and_dims():
    policy = policy_from_config(_ensemble_config({"actions": {"output": "actions", "slice": [10, 7]}}))
    actions = np.random.default_rng(0).normal(size=(1, 50, 32)).astype(np.float32)
    response = unbatch(policy, {"actions": actions})["actions"]
    assert response.shape == (10, 7)
    np.testing.assert_array_equal(response, actions[0, :10, :7])
    assert np.shares_memory(response, actions)  # no copy on the way to the encoder
    plain = policy_from_config(_ensemble_config({"actions": "actions"}))
    assert unbatch(plain, {"actions": actions})["actions"].shape == (50, 32)


@pytest.mark.parametrize(("entry", "message"), [
    ({"output": "actions", "slice": [60, 7]}, "does not fit the output's dims [50, 32]"),
    ({"output": "actions", "slice": [10, 7, 1]}, "does not fit"),
    ({"output": "actions", "slice": [0, 7]}, "list of positive integers"),
    ({"output": "actions", "slice": "10x7"}, "list of positive integers"),
    ({"slice": [10, 7]}, "must be an output name"),
])
def test_a_slice_that_cannot_apply_is_refused(entry, message):
    with pytest.raises(PolicyConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        policy_from_config(_ensemble_config({"actions": entry}))
