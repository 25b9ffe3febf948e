"""Shared fixtures: the exported reference policy and real tritonservers for the session."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openpi_triton.config import GPU_TORCH_CONFIG_NAME, Settings, core_onnx_path
from openpi_triton.front.app import create_app, front_server
from openpi_triton.process import free_port
from openpi_triton.triton.embedded import EmbeddedTriton

from .lerobot_fixtures import (  # noqa: F401  (LeRobot checkpoints, built once per session)
    droid_runner,
    droid_smolvla_checkpoint,
    lerobot_dir,
    lerobot_policies,
    lerobot_repository,
    lerobot_triton,
    smolvla_checkpoint,
    smolvla_runner,
    smolvlm_dir,
)

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
TEST_MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
MODEL_ONNX = core_onnx_path(MODEL_REPOSITORY)


@pytest.fixture(scope="session")
def model_onnx() -> Path:
    """The policy core's model.onnx (exported from code when missing; `make test` exports it first)."""
    if not MODEL_ONNX.exists():
        from openpi_policy.export import export_reference_policy

        export_reference_policy(MODEL_ONNX)
    return MODEL_ONNX


@pytest.fixture(scope="session")
def triton(model_onnx: Path) -> Iterator[EmbeddedTriton]:
    """A real tritonserver (the nvidia-pytriton binary) on the CPU configuration, on free ports."""
    repositories = [MODEL_REPOSITORY]
    if TEST_MODEL_REPOSITORY.is_dir():
        repositories.append(TEST_MODEL_REPOSITORY)
    server = EmbeddedTriton(
        repositories, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def torch_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """A real tritonserver serving configs/gpu_torch.pbtxt (the PyTorch policy core) on the CPU: a copy of
    the repository without model.onnx whose policy core runs KIND_CPU (float32, no CUDA graphs)."""
    from benchmarks.gpu_fleet import gpu_config_on_cpu

    repository = gpu_config_on_cpu(tmp_path_factory.mktemp("gpu_torch"), MODEL_REPOSITORY)
    server = EmbeddedTriton([repository], http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            model_config_name=GPU_TORCH_CONFIG_NAME)
    with server:
        yield server


@pytest.fixture(scope="session")
def second_triton(triton: EmbeddedTriton) -> Iterator[EmbeddedTriton]:
    """A second tritonserver on the same repositories: the other replica of the replica tests (which kill
    it and start it again)."""
    server = EmbeddedTriton(triton.model_repositories, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    with server:
        yield server


@contextlib.contextmanager
def running_front(settings: Settings) -> Iterator[str]:
    """The front under a real uvicorn in a background thread; yields its ws:// base URL."""
    server = front_server(create_app(settings), settings, log_level="warning", lifespan="on")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the front did not start")
        time.sleep(0.05)
    try:
        yield f"ws://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def http_get(url: str, path: str) -> tuple[int, str]:
    """(status, body) of GET `path` on a front, given its ws:// or http:// base URL."""
    try:
        with urllib.request.urlopen(url.replace("ws://", "http://") + path, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def front_settings(triton: EmbeddedTriton, **overrides: object) -> Settings:
    """A front on `triton`, which runs on this host: camera frames go through shared memory, as they do
    when `openpi-triton serve` starts its own tritonserver."""
    defaults = {"triton_url": triton.grpc_url, "port": free_port(), "host": "127.0.0.1", "triton_shared_memory": True}
    return Settings(**{**defaults, **overrides})


def settled_statistics(client: Any, model: str, inferences: int = 0, timeout_s: float = 10.0) -> Any:
    """`model`'s Triton statistics once they count at least `inferences` inferences and have stopped moving.

    Triton records a model's statistics just after it has sent the responses, so a client holding all its
    answers can still read counts that lag by a request or two."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        stats = client.get_inference_statistics(model).model_stats[0]
        settled = previous is not None and stats.inference_count == previous.inference_count
        if (settled and stats.inference_count >= inferences) or time.monotonic() > deadline:
            return stats
        previous = stats
        time.sleep(0.05)


@pytest.fixture(scope="session")
def front(triton: EmbeddedTriton) -> Iterator[str]:
    """A front with default settings on the session's tritonserver."""
    with running_front(front_settings(triton)) as url:
        yield url
