"""Synthetic observations built the way OpenPI's example clients build them (examples/libero,
examples/droid, examples/aloha_*) and Isaac GR00T's SO-100 examples do, for the demo client, the load
generator, the benchmarks and the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Observation = dict[str, Any]


def _image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def libero(rng: np.random.Generator) -> Observation:
    return {
        "observation/image": _image(rng, (224, 224, 3)),
        "observation/wrist_image": _image(rng, (224, 224, 3)),
        "observation/state": rng.normal(size=8),  # float64, as the example sends it
        "prompt": "put the black bowl on the plate",
    }


def droid(rng: np.random.Generator, raw_frames: bool = False) -> Observation:
    """raw_frames: send the camera's 480x640 frames instead of resizing on the robot."""
    shape = (480, 640, 3) if raw_frames else (224, 224, 3)
    return {
        "observation/exterior_image_1_left": _image(rng, shape),
        "observation/wrist_image_left": _image(rng, shape),
        "observation/joint_position": rng.normal(size=7),
        "observation/gripper_position": rng.uniform(0, 1, size=1),
        "prompt": "pick up the marker and put it in the cup",
    }


def aloha(rng: np.random.Generator, real_robot: bool = False) -> Observation:
    """CHW images under a nested `images` map, no prompt (the server injects the default)."""
    cameras = ["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"] if real_robot else ["cam_high"]
    return {
        "state": rng.normal(size=14),
        "images": {name: _image(rng, (3, 224, 224)) for name in cameras},
    }


def so100(rng: np.random.Generator, raw_frames: bool = False) -> Observation:
    """An SO-100 arm in Isaac GR00T's flat keys (the `so100` policy), one step of history (T = 1): what an
    OpenPI robot sends, and a GR00T N1.5 client too but for its language, a list of one text.
    raw_frames: the webcams' 480x640 frames instead of 224x224."""
    shape = (1, 480, 640, 3) if raw_frames else (1, 224, 224, 3)
    return {
        "video.front": _image(rng, shape),
        "video.wrist": _image(rng, shape),
        "state.single_arm": rng.normal(scale=30.0, size=(1, 5)),  # float64 degrees, as GR00T's clients send
        "state.gripper": rng.uniform(0.0, 60.0, size=(1, 1)),
        "annotation.human.task_description": "pick up the red cube and put it in the bin",
    }


FORMATS: dict[str, Callable[[np.random.Generator], Observation]] = {
    "libero": libero, "droid": droid, "aloha": aloha, "so100": so100,
}


def observation_factory(format_name: str) -> Callable[[np.random.Generator], Observation]:
    if format_name not in FORMATS:
        raise ValueError(f"unknown observation format {format_name!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[format_name]


def make_observations(format_name: str, count: int, seed: int = 0) -> list[Observation]:
    """`count` distinct synthetic observations (robots cycle through them)."""
    make = observation_factory(format_name)
    rng = np.random.default_rng(seed)
    return [make(rng) for _ in range(count)]


def describe(observation: Observation) -> dict[str, Any]:
    """Key -> dtype/shape summary of one observation, for results files."""
    summary: dict[str, Any] = {}
    for key, value in observation.items():
        if isinstance(value, dict):
            summary.update({f"{key}/{k}": v for k, v in describe(value).items()})
        elif isinstance(value, np.ndarray):
            summary[key] = f"{value.dtype}{list(value.shape)}"
        else:
            summary[key] = type(value).__name__
    return summary
