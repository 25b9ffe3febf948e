"""The `openpi-triton` command line: `check` on good and broken repositories, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openpi_triton.check import check_repository

from .conftest import MODEL_REPOSITORY


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openpi_triton", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.fixture
def repository(tmp_path: Path, model_onnx: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(MODEL_REPOSITORY, copy, ignore=shutil.ignore_patterns("model.onnx", "__pycache__"))
    (copy / "policy_core" / "1" / "model.onnx").symlink_to(model_onnx)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_the_shipped_repository_passes():
    result = cli("check", "--model-repository", str(MODEL_REPOSITORY))
    assert result.returncode == 0, result.stdout
    assert "5 policies: aloha, droid, droid_wam, libero, so100" in result.stdout


def test_observation_map_to_an_unknown_input(repository):
    edit(repository / "libero" / "config.pbtxt", '"observation/state": "state"', '"observation/state": "joints"')
    assert any("maps to unknown input 'joints'" in p for p in check_repository(repository).problems)


def test_norm_stats_with_the_wrong_state_width(repository):
    stats_path = repository / "droid" / "norm_stats.json"
    stats = json.loads(stats_path.read_text())
    for key in ("mean", "std", "q01", "q99"):
        stats["norm_stats"]["state"][key] = stats["norm_stats"]["state"][key][:7]
    stats_path.write_text(json.dumps(stats))
    problems = check_repository(repository).problems
    assert any("droid_preprocess" in p and "8 dims" in p and "has 7" in p for p in problems), problems


def test_action_slice_wider_than_the_action_norm_stats(repository):
    edit(repository / "libero" / "config.pbtxt", '"slice": [10, 7]', '"slice": [10, 8]')
    problems = check_repository(repository).problems
    assert any("libero/config.pbtxt" in p and "slice [10, 8] gives 8 action dims" in p and "has 7 for 'actions'" in p
               for p in problems), problems


def test_actions_without_a_slice_would_reach_the_robot_padded(repository):
    edit(repository / "droid" / "config.pbtxt", '''{"actions": {"output": "actions", "slice": [15, 8]}}''',
         '''{"actions": "actions"}''')
    problems = check_repository(repository).problems
    assert any("output (no slice) [50, 32] gives 32 action dims" in p and "has 8 for 'actions'" in p
               for p in problems), problems


def test_action_slice_longer_than_the_core_horizon(repository):
    edit(repository / "aloha" / "config.pbtxt", '"slice": [50, 14]', '"slice": [60, 14]')
    problems = check_repository(repository).problems
    assert any("slice [60, 14] does not fit the output's dims [50, 32]" in p for p in problems), problems


def test_ensemble_step_dtype_mismatch(repository):
    edit(repository / "libero" / "config.pbtxt", '{ name: "state" data_type: TYPE_FP32 dims: [ 8 ] }',
         '{ name: "state" data_type: TYPE_FP64 dims: [ 8 ] }')
    problems = check_repository(repository).problems
    assert any("'state' is ('TYPE_FP64', [8]) but 'libero_preprocess'" in p for p in problems), problems


def test_a_model_directory_without_config_is_reported(repository):
    """What an older checkout leaves of a model removed from git: tritonserver would refuse to start."""
    (repository / "libero_postprocess" / "1" / "__pycache__").mkdir(parents=True)
    problems = check_repository(repository).problems
    assert any("libero_postprocess: no config.pbtxt, so tritonserver refuses to start" in p for p in problems), problems


def test_missing_model_onnx(repository):
    (repository / "policy_core" / "1" / "model.onnx").unlink()
    result = cli("check", "--model-repository", str(repository))
    assert result.returncode == 1 and "model.onnx: missing; run `openpi-triton export`" in result.stdout


@pytest.mark.parametrize("command", ["serve", "export", "check", "client"])
def test_every_command_has_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0 and "usage: openpi-triton " + command in result.stdout


def test_mistakes_get_one_line(tmp_path):
    wrong_flag = cli("serve", "--prot", "9")
    assert wrong_flag.returncode == 2 and "unrecognized arguments: --prot" in wrong_flag.stderr
    missing_keys = cli("serve", "--api-key-file", str(tmp_path / "keys.txt"))
    assert missing_keys.returncode == 2
    assert missing_keys.stderr.strip().splitlines() == [f"openpi-triton: error: API key file {tmp_path / 'keys.txt'} "
                                                        "does not exist"]
    no_model = cli("serve", "--model-repository", str(tmp_path))
    assert no_model.returncode == 2 and "model.onnx is missing: run `openpi-triton export`" in no_model.stderr
    no_variant = cli("serve", "--model-config-name", "gpu")
    assert no_variant.returncode == 2 and ("--model-config-name gpu: no model in model_repository has "
                                           "configs/gpu.pbtxt (there: cpu, gpu_torch)") in no_variant.stderr


def test_a_taken_triton_port_is_one_line(model_onnx):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = cli("serve", "--triton-grpc-port", port, "--port", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("openpi-triton: error:") and port in lines[0], lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "expected"), [
    ([], True),  # the embedded tritonserver shares this host
    (["--triton-url", "gpu-host:8001"], False),  # another host may not share /dev/shm
    (["--triton-url", "localhost:8001", "--triton-shared-memory", "on"], True),
    (["--triton-shared-memory", "off"], False),
])
def test_shared_memory_is_on_for_a_triton_on_this_host(args, expected):
    from openpi_triton.cli import build_parser
    from openpi_triton.cli.serve import settings_from_args

    args = build_parser().parse_args(["serve", *args])
    assert settings_from_args(args).shares_memory(embedded=args.triton_url is None) is expected


def test_settings_and_serve_agree_on_the_shared_memory_default():
    from openpi_triton.cli import build_parser
    from openpi_triton.cli.serve import settings_from_args
    from openpi_triton.config import Settings

    served = settings_from_args(build_parser().parse_args(["serve"]))
    assert served.triton_shared_memory == Settings().triton_shared_memory
    assert served.shares_memory(embedded=True) and not Settings(triton_url="gpu-host:8001").shares_memory(False)


def test_environment_variables_are_read_and_checked():
    import os

    env = {**os.environ, "OPENPI_TRITON_MAX_CONNECTIONS": "many"}
    result = cli("serve", env=env)
    assert result.returncode == 2
    assert "OPENPI_TRITON_MAX_CONNECTIONS='many' is not a valid int" in result.stderr
    shown = cli("serve", "--help", env={**os.environ, "OPENPI_TRITON_PORT": "9123"})
    assert re.search(r"default:\s+9123", shown.stdout)


@pytest.mark.integration
@pytest.mark.parametrize("fmt, shape", [("libero", "(10, 7)"), ("droid", "(15, 8)"), ("aloha", "(50, 14)"),
                                        ("so100", "{'action.single_arm': (16, 5), 'action.gripper': (16, 1)}")])
def test_demo_client_runs_a_robot_loop(front, fmt, shape):
    port = front.rsplit(":", 1)[1]
    result = cli("client", "--format", fmt, "--steps", "3", "--host", "127.0.0.1", "--port", port)
    assert result.returncode == 0, result.stderr
    assert f"3 steps of {fmt}: actions {shape}; latency p50" in result.stdout
    assert "3/3" in result.stderr  # the progress bar reached the end


@pytest.mark.integration
def test_adding_a_format_is_data(repository):
    """The README's UR5 walkthrough, step by step, then served by Triton to a stock openpi_client."""
    import numpy as np
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from openpi_triton.process import free_port
    from openpi_triton.triton.embedded import EmbeddedTriton

    from .conftest import front_settings, running_front

    for suffix in ("", "_preprocess"):
        shutil.copytree(repository / f"droid{suffix}", repository / f"ur5{suffix}")
        config = repository / f"ur5{suffix}" / "config.pbtxt"
        text = config.read_text().replace("droid", "ur5")
        for old, new in [("exterior_image_1_left", "base_rgb"), ("wrist_image_left", "wrist_rgb"),
                         ('"joint_position" data_type: TYPE_FP32 dims: [ 7 ]',
                          '"joints" data_type: TYPE_FP32 dims: [ 6 ]'),
                         ("joint_position", "joints"), ("gripper_position", "gripper")]:
            text = text.replace(old, new)
        config.write_text(text)
    edit(repository / "ur5" / "config.pbtxt", "observation/", "")
    edit(repository / "ur5" / "config.pbtxt", '"slice": [15, 8]', '"slice": [10, 7]')
    stats = {"mean": [0.0] * 7, "std": [1.0] * 7, "q01": [-1.0] * 7, "q99": [1.0] * 7}
    (repository / "ur5" / "norm_stats.json").write_text(json.dumps({"norm_stats": {"state": stats, "actions": stats}}))

    report = check_repository(repository)
    assert report.ok, report.problems
    assert "ur5" in report.policies

    rng = np.random.default_rng(0)
    observation = {"base_rgb": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
                   "wrist_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                   "joints": rng.normal(size=6), "gripper": np.array([0.5]), "prompt": "stack the blocks"}
    with EmbeddedTriton([repository], http_port=free_port(), grpc_port=free_port(),
                        metrics_port=free_port()) as triton, running_front(front_settings(triton)) as url:
        actions = WebsocketClientPolicy(host=url + "/v1/realtime/robot/openpi/ur5").infer(observation)["actions"]
    assert actions.shape == (10, 7) and actions.dtype == np.float32
