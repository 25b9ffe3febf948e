"""Pickles as LeRobot's RobotClient writes them, without importing lerobot: look-alike dataclasses written
under lerobot's module paths (field for field the same as lerobot 0.4.4's; test_lerobot_grpc_unpickle checks
the real classes too), and hostile ones."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from typing import Any

NEW_MODULE = "lerobot.async_inference.helpers"
OLD_MODULE = "lerobot.scripts.server.helpers"


@dataclass
class RemotePolicyConfig:
    policy_type: str
    pretrained_name_or_path: str
    lerobot_features: dict
    actions_per_chunk: int
    device: str = "cpu"
    rename_map: dict = field(default_factory=dict)


@dataclass
class TimedObservation:
    timestamp: float
    timestep: int
    observation: dict
    must_go: bool = False


def dumps_as(obj: Any, module: str = NEW_MODULE, protocol: int = 4) -> bytes:
    """pickle.dumps(obj) with obj's class named `module`.<its name>, as a client with lerobot would write it."""

    class Pickler(pickle._Pickler):  # type: ignore[name-defined]
        def save_global(self, value: Any, name: str | None = None) -> None:
            if value in (RemotePolicyConfig, TimedObservation):
                if self.proto >= 4:
                    self.save(module)
                    self.save(value.__name__)
                    self.write(pickle.STACK_GLOBAL)
                else:
                    self.write(pickle.GLOBAL + f"{module}\n{value.__name__}\n".encode())
                self.memoize(value)
                return
            super().save_global(value, name)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def features(joints: int = 6, cameras: dict[str, tuple[int, int]] | None = None) -> dict[str, dict]:
    """lerobot_features as RobotClient sends them (hw_to_dataset_features of the robot's observation_features)."""
    result: dict[str, dict] = {"observation.state": {"dtype": "float32", "shape": (joints,),
                                                     "names": [f"joint{i}.pos" for i in range(joints)]}}
    for name, (height, width) in ({"front": (48, 64)} if cameras is None else cameras).items():
        result[f"observation.images.{name}"] = {"dtype": "image", "shape": (height, width, 3),
                                                "names": ["height", "width", "channels"]}
    return result
