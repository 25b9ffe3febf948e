"""Shared fixtures: the exported reference policy and real tritonservers for the session."""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.client import ClientConnection, connect

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
from .waiting import wait_until

# The longest a test waits for one websocket message (a frame's answer, the handshake): generous for two
# loaded cores; reaching it fails the test instead of hanging it.
RECV_TIMEOUT_S = 120.0  # above the test fronts' Triton timeout: a slow answer is an error text, not a hang
LOADED_MACHINE_TRITON_TIMEOUT_S = 60.0  # see front_settings

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
TEST_MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
MODEL_ONNX = core_onnx_path(MODEL_REPOSITORY)


# Fixtures that start a real tritonserver (directly or under a front): a test using one is an integration test.
TRITON_FIXTURES = {"triton", "second_triton", "torch_triton", "front", "lerobot_triton"}
# The session's tritonservers themselves (the front fixture runs on `triton`).
SESSION_TRITONS = TRITON_FIXTURES - {"front"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that starts a tritonserver through a fixture without the `integration` mark (tests
    that start one themselves carry the mark by hand)."""
    unmarked = [item.nodeid for item in items if TRITON_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("tests that start a tritonserver need @pytest.mark.integration: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def session_tritonservers_running(request: pytest.FixtureRequest) -> None:
    """Every session tritonserver a test uses is running when it starts (see `start_again_if_exited`)."""
    for name in sorted(SESSION_TRITONS & set(request.fixturenames)):
        start_again_if_exited(name, request.getfixturevalue(name))


def start_again_if_exited(name: str, server: EmbeddedTriton) -> bool:
    """Starts again, on its ports, a session tritonserver that an earlier test left dead (with a warning
    that quotes its log), so that one crash fails one test and not every later test on that server.

    Seen once on the loaded 2-core VM: Triton 2.51's python backend calls a stub "not healthy" when its
    heartbeat (every 300 ms) misses a 1 s window during a long execute, which a stall of the whole VM
    causes, and tritonserver then aborts (boost lock_exception)."""
    if not server.exited():
        return False
    tail = server.child.log_tail(5) if server.child is not None else ""
    server.stop()
    server.start()
    warnings.warn(f"the session tritonserver {name!r} had exited; started again. Last lines of its log:\n{tail}",
                  stacklevel=2)
    return True


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
def running_front(settings: Settings, backend: Any = None) -> Iterator[str]:
    """The front (on `backend`, else on `settings.triton_url`) under a real uvicorn in a background thread;
    yields its ws:// base URL."""
    server = front_server(create_app(settings, backend), settings, log_level="warning", lifespan="on")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the front starts", 30)
    assert server.started, "the front did not start"
    try:
        yield f"ws://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def http_get(url: str, path: str) -> tuple[int, str]:
    """(status, body) of GET `path` on a front, given its ws:// or http:// base URL."""
    try:
        with urllib.request.urlopen(url.replace("ws://", "http://") + path, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def front_settings(triton: EmbeddedTriton, **overrides: object) -> Settings:
    """A front on `triton`, which runs on this host: camera frames go through shared memory, as they do
    when `openpi-triton serve` starts its own tritonserver. Its Triton calls wait up to a minute: on two
    cores shared with other test runs, 32 robots' calls can queue past the 10 s default, and a test that
    is not about timeouts must not fail on one."""
    defaults = {"triton_url": triton.grpc_url, "port": free_port(), "host": "127.0.0.1", "triton_shared_memory": True,
                "triton_timeout_s": LOADED_MACHINE_TRITON_TIMEOUT_S}
    return Settings(**{**defaults, **overrides})


def settled_statistics(client: Any, model: str, inferences: int = 0, timeout_s: float = 10.0) -> Any:
    """`model`'s Triton statistics once they count at least `inferences` inferences and have stopped moving.

    Triton records a model's statistics just after it has sent the responses, so a client holding all its
    answers can still read counts that lag by a request or two."""
    readings: list[Any] = []

    def settled() -> Any:
        readings.append(client.get_inference_statistics(model).model_stats[0])
        previous, stats = readings[-2:] if len(readings) > 1 else (None, readings[-1])
        if previous is not None and stats.inference_count == previous.inference_count >= inferences:
            return stats
        return None

    with contextlib.suppress(AssertionError):  # past the timeout: the last reading, for the caller's assertion
        return wait_until(settled, f"{model}'s statistics settle", timeout_s)
    return readings[-1]


@pytest.fixture(scope="session")
def front(triton: EmbeddedTriton) -> Iterator[str]:
    """A front with default settings on the session's tritonserver."""
    with running_front(front_settings(triton)) as url:
        yield url


@pytest.fixture
def open_ws() -> Iterator[Callable[..., ClientConnection]]:
    """Opens plain websockets to a front (for frames openpi_client cannot send), each with its handshake
    frame consumed unless `handshake=False`; closes every one after the test."""
    opened: list[ClientConnection] = []

    def open_one(url: str, path: str = "", handshake: bool = True) -> ClientConnection:
        ws = connect(url + path, compression=None, max_size=None, open_timeout=RECV_TIMEOUT_S)
        opened.append(ws)
        if handshake:
            ws.recv(timeout=RECV_TIMEOUT_S)
        return ws

    yield open_one
    for ws in opened:
        ws.close()


@pytest.fixture
def open_robot() -> Iterator[Callable[..., WebsocketClientPolicy]]:
    """Opens stock openpi_client robots on a front; closes their websockets after the test."""
    opened: list[WebsocketClientPolicy] = []

    def open_one(url: str, path: str = "", api_key: str | None = None) -> WebsocketClientPolicy:
        robot = WebsocketClientPolicy(host=url + path, api_key=api_key)
        opened.append(robot)
        return robot

    yield open_one
    for robot in opened:
        robot._ws.close()  # openpi_client has no close of its own
