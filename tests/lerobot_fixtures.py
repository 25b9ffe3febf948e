"""Session fixtures for LeRobot checkpoints: tiny checkpoints built once (benchmarks/lerobot_checkpoints.py,
LeRobot's real classes and save_pretrained), one tritonserver serving them through a generated repository,
and the in-process LeRobot runners the served answers are compared with. Nothing downloads: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.lerobot_checkpoints import RobotFeatures, build_smolvla, build_smolvlm_dir
from openpi_triton.process import free_port
from openpi_triton.triton.embedded import EmbeddedTriton

os.environ["HF_HUB_OFFLINE"] = "1"  # here and in the tritonserver the tests start (it inherits the environment)
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SO100 = RobotFeatures(cameras=("front", "wrist"), state_dim=6, action_dim=6)
DROID = RobotFeatures(cameras=("exterior", "wrist"), state_dim=8, action_dim=8)


@pytest.fixture(scope="session")
def lerobot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lerobot")


@pytest.fixture(scope="session")
def smolvlm_dir(lerobot_dir: Path) -> Path:
    return build_smolvlm_dir(lerobot_dir / "smolvlm")


@pytest.fixture(scope="session")
def smolvla_checkpoint(lerobot_dir: Path, smolvlm_dir: Path) -> Path:
    """A tiny SmolVLA for an SO-100 arm: cameras front and wrist, 6 joints."""
    return build_smolvla(lerobot_dir / "smolvla_so100", SO100, vlm_dir=smolvlm_dir, seed=1)


@pytest.fixture(scope="session")
def droid_smolvla_checkpoint(lerobot_dir: Path, smolvlm_dir: Path) -> Path:
    """A tiny SmolVLA trained on DROID-shaped data: two cameras, 7 joints + gripper."""
    return build_smolvla(lerobot_dir / "smolvla_droid", DROID, vlm_dir=smolvlm_dir, seed=2)


@pytest.fixture(scope="session")
def lerobot_policies(smolvla_checkpoint: Path, droid_smolvla_checkpoint: Path) -> list:
    from openpi_triton.triton.lerobot_repository import LeRobotPolicy

    return [LeRobotPolicy("smol", str(smolvla_checkpoint)),
            LeRobotPolicy("smol_droid", str(droid_smolvla_checkpoint), keys="droid"),
            LeRobotPolicy("smol_gr00t", str(smolvla_checkpoint), keys="gr00t")]


@pytest.fixture(scope="session")
def lerobot_repository(lerobot_dir: Path, lerobot_policies: list) -> Path:
    from openpi_triton.triton.lerobot_repository import prepare, write_repository

    return write_repository(lerobot_dir / "repository", [prepare(policy) for policy in lerobot_policies])


@pytest.fixture(scope="session")
def lerobot_triton(lerobot_repository: Path) -> Iterator[EmbeddedTriton]:
    """A real tritonserver serving the generated repository (the LeRobot models run in its python stubs)."""
    server = EmbeddedTriton([lerobot_repository], http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), startup_timeout_s=300, exit_timeout_s=30)
    with server:
        yield server


@pytest.fixture(scope="session")
def smolvla_runner(smolvla_checkpoint: Path):
    """LeRobot in-process on the same checkpoint: what a served answer must equal."""
    from openpi_policy.lerobot.runner import LeRobotRunner

    return LeRobotRunner.from_checkpoint(str(smolvla_checkpoint))


@pytest.fixture(scope="session")
def droid_runner(droid_smolvla_checkpoint: Path):
    from openpi_policy.lerobot.runner import LeRobotRunner

    return LeRobotRunner.from_checkpoint(str(droid_smolvla_checkpoint))
