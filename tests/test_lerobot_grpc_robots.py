"""LeRobot's own RobotClient (lerobot 0.4.4, unchanged) against `serve --lerobot-port`, on a tiny SmolVLA
checkpoint served by a real tritonserver: the control loop gets actions, several robots are batched in Triton,
and the same observation and noise give the same actions over gRPC, websocket and in-process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from openpi_triton.config import Settings
from openpi_triton.front.app import create_app, front_server
from openpi_triton.front.lerobot import robots as robots_module
from openpi_triton.process import free_port
from openpi_triton.triton.embedded import EmbeddedTriton

pytestmark = pytest.mark.integration
POLICY = "tiny_smolvla"
CHUNK = 10  # the tiny checkpoint's chunk_size


@pytest.fixture(scope="session")
def smolvla_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmarks.lerobot_checkpoints import build_smolvla

    return build_smolvla(tmp_path_factory.mktemp("lerobot_grpc") / POLICY)


@pytest.fixture(scope="session")
def smolvla_triton(smolvla_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    from openpi_triton.triton.lerobot_repository import LeRobotPolicy, prepare, write_repository

    repository = write_repository(tmp_path_factory.mktemp("lerobot_grpc_repository"),
                                  [prepare(LeRobotPolicy(POLICY, str(smolvla_checkpoint)))])
    with EmbeddedTriton([repository], http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as server:
        yield server


@contextlib.contextmanager
def serving(triton: EmbeddedTriton, **overrides: Any) -> Iterator[tuple[str, Any]]:
    """The front with the LeRobot endpoint in a background thread: (websocket URL, the LeRobotServer)."""
    settings = Settings(**{"triton_url": triton.grpc_url, "port": free_port(), "host": "127.0.0.1",
                           "lerobot_port": free_port(), "default_policy": POLICY, **overrides})
    app = create_app(settings)
    server = front_server(app, settings, log_level="warning", lifespan="on")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the front did not start")
        time.sleep(0.05)
    try:
        yield f"ws://127.0.0.1:{settings.port}", app.state.lerobot
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def robot_client_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """lerobot.async_inference.robot_client, imported in a scratch directory (it creates ./logs at import)."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("robot_client_logs"))
    try:
        robot_client = pytest.importorskip("lerobot.async_inference.robot_client")
    finally:
        os.chdir(here)
    return robot_client


class Offers:
    """Every observation the endpoint's per-robot filter saw: (timestep, must_go, queued)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, bool, bool]] = []
        original = robots_module.Robot.offer

        def offer(robot: Any, pending: Any, must_go: bool) -> bool:
            queued = original(robot, pending, must_go)
            self.seen.append((pending.timestep, must_go, queued))
            return queued

        monkeypatch.setattr(robots_module.Robot, "offer", offer)


def run_clients(module: Any, port: int, ids: list[str], tmp_path: Path, seconds: float,
                until: Any = None, **config: Any) -> list[Any]:
    """Stock RobotClients, one per id, each with its receiver thread and control loop, for at most `seconds`.

    Robots are separate machines or processes; here they share one process, whose gRPC channels to one
    address would share one connection (one peer). Each robot dials its own loopback address
    (127.0.0.1, 127.0.0.2, ...), so each has its own connection, as separate robots do."""
    from benchmarks.fakearm import FakeArmConfig

    clients = []
    for index, robot_id in enumerate(ids):
        options = {"policy_type": "smolvla", "pretrained_name_or_path": POLICY, "actions_per_chunk": CHUNK,
                   "server_address": f"127.0.0.{index + 1}:{port}", "task": "pick up the red cube",
                   "chunk_size_threshold": 0.5, **config}
        robot = FakeArmConfig(id=robot_id, calibration_dir=tmp_path / "calibration")
        clients.append(module.RobotClient(module.RobotClientConfig(robot=robot, **options)))
    threads = []
    for client in clients:
        assert client.start(), "the handshake failed"
        threads += [threading.Thread(target=client.receive_actions, daemon=True),
                    threading.Thread(target=client.control_loop, kwargs={"task": client.config.task}, daemon=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until is not None and until()):
        time.sleep(0.1)
    for client in clients:
        client.stop()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    return clients


def test_a_stock_robot_client_runs_its_control_loop(smolvla_triton, robot_client_module, tmp_path, monkeypatch):
    from benchmarks import fakearm

    offers = Offers(monkeypatch)
    with serving(smolvla_triton) as (_, endpoint):
        [client] = run_clients(robot_client_module, endpoint.port, ["solo"], tmp_path, 60,
                               until=lambda: len(fakearm.SENT.get("solo", [])) >= 3 * CHUNK)
    sent = fakearm.SENT["solo"]
    assert len(sent) >= 3 * CHUNK, "the robot did not get its actions"
    assert set(sent[0]) == {f"{joint}.pos" for joint in fakearm.JOINTS}
    assert all(np.isfinite(list(action.values())).all() for action in sent)
    assert client.latest_action >= 2 * CHUNK  # timesteps advanced over several chunks
    assert client.action_chunk_size == CHUNK
    # LeRobot's flow: the first observation must go; later ones are sent only while the queue is at most half
    # full, and must_go is set again only by a chunk's arrival (one must-go per empty queue)
    assert offers.seen[0][1] and offers.seen[0][2]
    queued = [timestep for timestep, _, ok in offers.seen if ok]
    assert queued == sorted(queued) and len(set(queued)) >= 3
    sizes = client.action_queue_size
    assert max(sizes) <= CHUNK
    assert sum(1 for _, must_go, _ in offers.seen if must_go) <= len(queued)


def test_four_robots_are_batched_in_triton(smolvla_triton, robot_client_module, tmp_path):
    import tritonclient.grpc as grpcclient

    from benchmarks import fakearm

    triton = grpcclient.InferenceServerClient(smolvla_triton.grpc_url)

    def batches() -> dict[int, int]:
        stats = triton.get_inference_statistics(POLICY + "_lerobot").model_stats[0]
        return {item.batch_size: item.compute_infer.count for item in stats.batch_stats}

    before = batches()
    ids = [f"arm{i}" for i in range(4)]
    # bound to every address, open to loopback only: robots dial 127.0.0.1 to 127.0.0.4
    with serving(smolvla_triton, lerobot_host="0.0.0.0", lerobot_allow=("127.0.0.0/8",)) as (_, endpoint):
        run_clients(robot_client_module, endpoint.port, ids, tmp_path, 90,
                    until=lambda: len(endpoint.robots) == 4 and all(len(fakearm.SENT.get(i, [])) >= 3 * CHUNK
                                                                    for i in ids)
                    and any(size > 1 and count > before.get(size, 0) for size, count in batches().items()))
        assert len(endpoint.robots) == 4, "each robot has its own state on the server"
    for robot_id in ids:
        assert len(fakearm.SENT.get(robot_id, [])) >= CHUNK
    grown = {size: count - before.get(size, 0) for size, count in batches().items()}
    assert any(size > 1 and count > 0 for size, count in grown.items()), f"no batch of several robots: {grown}"


def test_a_checkpoint_not_served_makes_the_stock_client_give_up(smolvla_triton, robot_client_module, tmp_path):
    from benchmarks.fakearm import FakeArmConfig

    with serving(smolvla_triton) as (_, endpoint):
        config = robot_client_module.RobotClientConfig(
            robot=FakeArmConfig(id="stranger", calibration_dir=tmp_path), policy_type="smolvla",
            pretrained_name_or_path="lerobot/smolvla_base", actions_per_chunk=CHUNK,
            server_address=f"127.0.0.1:{endpoint.port}")
        client = robot_client_module.RobotClient(config)
        assert client.start() is False
        client.stop()


def same_observation(step: int) -> dict[str, Any]:
    from benchmarks.fakearm import observation

    raw = observation(step, seed_of_scene=3)
    raw["task"] = "stack the blocks"
    return raw


def test_grpc_websocket_and_in_process_answer_the_same(smolvla_triton, smolvla_checkpoint, robot_client_module):
    import torch
    from lerobot.async_inference.helpers import raw_observation_to_observation
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from tests.lerobot_pickles import features
    from tests.test_lerobot_grpc_server import Client

    seed, raw = 1234, same_observation(1)
    feats = features(cameras={"front": (48, 64), "wrist": (48, 64)})
    with serving(smolvla_triton) as (url, endpoint):
        async def over_grpc() -> np.ndarray:
            client = Client(endpoint.port)
            try:
                await client.start(name=POLICY, chunk=CHUNK, lerobot_features=feats)
                from openpi_triton.front.lerobot import wire
                from tests.lerobot_pickles import TimedObservation, dumps_as

                data = dumps_as(TimedObservation(1.0, 0, {**raw, "seed": seed}, True))
                await client.observe_call(_one(wire.Observation(transfer_state=wire.TRANSFER_END, data=data)))
                actions = await client.actions()
            finally:
                await client.channel.close()
            return np.stack([a.action.numpy() for a in actions])

        grpc_actions = asyncio.run(over_grpc())
        ws = WebsocketClientPolicy(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        try:
            frame = {"observation.state": np.array([raw[f"joint{i}.pos"] for i in range(6)], np.float32),
                     "observation.images.front": raw["front"], "observation.images.wrist": raw["wrist"],
                     "task": raw["task"], "seed": seed}
            ws_actions = ws.infer(frame)["actions"]
        finally:
            ws._ws.close()

    policy = SmolVLAPolicy.from_pretrained(str(smolvla_checkpoint)).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(smolvla_checkpoint))
    batch = pre(raw_observation_to_observation(raw, feats, policy.config.image_features))
    noise = torch.randn(policy.config.chunk_size, policy.config.max_action_dim,
                        generator=torch.Generator().manual_seed(seed))[None]
    with torch.inference_mode():
        reference = post(policy.predict_action_chunk(batch, noise=noise))[0].float().numpy()

    assert grpc_actions.shape == (CHUNK, 6) and grpc_actions.dtype == np.float32
    np.testing.assert_allclose(grpc_actions, ws_actions, rtol=0, atol=1e-6)
    np.testing.assert_allclose(grpc_actions, reference, rtol=1e-4, atol=1e-4)


async def _one(message: Any) -> Any:
    yield message
