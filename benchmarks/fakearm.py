"""A LeRobot robot defined for the tests (LeRobot's `Robot` interface): six joints and two cameras whose
observations come from a function, and the actions it was sent, recorded. LeRobot finds the class from its
config (`make_device_from_device_class`): FakeArmConfig in module benchmarks.fakearm -> benchmarks.fakearm.FakeArm."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from lerobot.robots.config import RobotConfig
from lerobot.robots.robot import Robot

JOINTS = tuple(f"joint{i}" for i in range(6))
CAMERAS = {"front": (48, 64), "wrist": (48, 64)}
# What each robot (by config id) observes and was sent.
OBSERVE: dict[str, Any] = {}
SENT: dict[str, list[dict[str, float]]] = {}
_lock = threading.Lock()


def observation(step: int, seed_of_scene: int = 0) -> dict[str, Any]:
    """A raw observation that moves a lot each step (every one passes LeRobot's similarity filter)."""
    rng = np.random.default_rng(seed_of_scene)
    raw: dict[str, Any] = {f"{joint}.pos": float(10 * step + i) for i, joint in enumerate(JOINTS)}
    for name, (height, width) in CAMERAS.items():
        raw[name] = rng.integers(0, 255, (height, width, 3), np.uint8)
    return raw


@RobotConfig.register_subclass("fake_arm")
@dataclass
class FakeArmConfig(RobotConfig):
    pass


class FakeArm(Robot):
    config_class = FakeArmConfig
    name = "fake_arm"

    def __init__(self, config: FakeArmConfig) -> None:
        super().__init__(config)
        self.key = str(config.id)
        self.steps = 0
        self.connected = False

    @property
    def observation_features(self) -> dict:
        return {**{f"{joint}.pos": float for joint in JOINTS},
                **{name: (height, width, 3) for name, (height, width) in CAMERAS.items()}}

    @property
    def action_features(self) -> dict:
        return {f"{joint}.pos": float for joint in JOINTS}

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self, calibrate: bool = True) -> None:
        self.connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict[str, Any]:
        self.steps += 1
        make = OBSERVE.get(self.key, observation)
        return make(self.steps)

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        with _lock:
            SENT.setdefault(self.key, []).append(dict(action))
        return action

    def disconnect(self) -> None:
        self.connected = False
