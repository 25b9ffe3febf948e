"""pi0 and pi0.5 checkpoints (tiny sizes through the `benchmarks/lerobot_tiny_pi.py` plugin, on both sides)
served through a real tritonserver with a local PaliGemma tokenizer (--lerobot-tokenizer), compared with
LeRobot in-process. LeRobot 0.4 runs pi0/pi0.5 only on its fork of transformers, which cannot be installed
on this machine: here these tests skip, and `test_lerobot_checkpoints` checks the start-up refusal instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.lerobot_checkpoints import TINY_PI_PLUGIN, build_paligemma_tokenizer, build_pi, pi_runtime_installed
from openpi_triton.process import free_port
from openpi_triton.triton.embedded import EmbeddedTriton

from .conftest import front_settings, running_front
from .lerobot_fixtures import SO100
from .test_lerobot_serving import TOLERANCE, InProcess, expected, policy_client, so100_observation

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not pi_runtime_installed(), reason="pi0/pi0.5 in LeRobot 0.4 need LeRobot's transformers fork (not installed)")]
TYPES = ("pi0", "pi05")


@pytest.fixture(scope="module")
def pi_checkpoints(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("pi")
    tokenizer = build_paligemma_tokenizer(root / "paligemma_tokenizer")
    return {kind: build_pi(root / kind, kind, SO100, tokenizer_dir=tokenizer, seed=3) for kind in TYPES}, tokenizer


@pytest.fixture(scope="module")
def pi_front(pi_checkpoints, tmp_path_factory) -> Iterator[str]:
    from openpi_triton.triton.lerobot_repository import LeRobotPolicy, prepare, write_repository

    checkpoints, tokenizer = pi_checkpoints
    policies = [LeRobotPolicy(kind, str(path), tokenizer=str(tokenizer), plugins=(str(TINY_PI_PLUGIN),))
                for kind, path in checkpoints.items()]
    repository = write_repository(tmp_path_factory.mktemp("pi_repo"), [prepare(p) for p in policies])
    with EmbeddedTriton([repository], http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                        startup_timeout_s=300) as triton, running_front(front_settings(triton)) as url:
        yield url


@pytest.mark.parametrize("kind", TYPES)
def test_pi_parity(kind, pi_checkpoints, pi_front) -> None:
    checkpoints, tokenizer = pi_checkpoints
    reference = InProcess(checkpoints[kind], tokenizer=str(tokenizer))
    client = policy_client((pi_front, 0), kind)
    assert client.get_server_metadata()["lerobot"]["policy_type"] == kind
    for seed in (0, 1):
        obs = so100_observation(seed)
        actions = client.infer(dict(obs))["actions"]
        np.testing.assert_allclose(actions, expected(reference, obs), atol=TOLERANCE, rtol=0)
