"""`openpi-triton serve --lerobot-policy` as a user runs it: a checkpoint whose weights do not fit stops the
server at start-up with the reason, and the benchmark (which serves through that one command) runs on the
tiny model."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openpi_triton.process import free_port

pytestmark = pytest.mark.integration


def serve_command(policy: str, workdir: Path) -> list[str]:
    empty = workdir / "no_other_policies"
    empty.mkdir(exist_ok=True)
    return [sys.executable, "-m", "openpi_triton", "serve", "--lerobot-policy", policy,
            "--model-repository", str(empty), "--host", "127.0.0.1", "--port", str(free_port()),
            "--triton-grpc-port", str(free_port()), "--triton-http-port", str(free_port()),
            "--triton-metrics-port", str(free_port())]


def test_weights_that_do_not_fit_stop_serve_at_start_up(smolvla_checkpoint, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    broken = Path(shutil.copytree(smolvla_checkpoint, tmp_path / "broken"))
    tensors = load_file(str(broken / "model.safetensors"))
    save_file({k: v for i, (k, v) in enumerate(tensors.items()) if i % 3}, str(broken / "model.safetensors"))
    done = subprocess.run(serve_command(f"arm={broken}", tmp_path), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    kept_log = re.search(r"its log \((/[^)]+\.log)\)", done.stderr)
    if kept_log:  # tritonserver's log is kept for the user after a failed start; the test's is not needed
        Path(kept_log.group(1)).unlink(missing_ok=True)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model 'arm_lerobot' failed to load" in done.stderr
    assert "not in model.safetensors" in done.stderr and "refusing" in done.stderr


def test_serve_refuses_a_bad_checkpoint_before_starting_triton(smolvla_checkpoint, tmp_path) -> None:
    broken = Path(shutil.copytree(smolvla_checkpoint, tmp_path / "broken"))
    (broken / "policy_preprocessor.json").unlink()
    done = subprocess.run(serve_command(f"arm={broken}", tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--lerobot-policy arm" in done.stderr and "missing policy_preprocessor.json" in done.stderr
    assert "starting tritonserver" not in done.stdout


def test_benchmark_smoke_on_the_tiny_model(tmp_path) -> None:
    from benchmarks.lerobot_smolvla import main, table

    result = main(["--size", "tiny", "--robots", "1,2", "--steps", "2", "--image", "48x64",
                   "--output", str(tmp_path / "result.json")])
    assert [row["robots"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["served"]["answers_per_s"] > 0 and row["in_process"]["call_ms"] > 0
    assert "one_robot_overhead" in result and "| 2 |" in table(result)
    assert (tmp_path / "result.json").is_file()
