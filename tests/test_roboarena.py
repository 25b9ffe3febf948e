"""RoboArena, DreamZero and MolmoSpaces clients on the front, against the droid_wam example on a real
tritonserver. The clients are written from their public code (see shared/reference), not from our codec:
- RoboArena's evaluation client (robo-arena/roboarena): openpi-client's msgpack_numpy over websockets;
  the server's first frame is a PolicyServerConfig; every frame carries `endpoint`; `infer` reads a bare
  array, `reset` the text "reset successful".
- MolmoSpaces' DreamZero client (allenai/molmospaces, dreamzero_policy.py): the PyPI msgpack-numpy
  package both ways, ws://host:port with no path, a new uuid session_id per episode and never `reset`,
  reads result["actions"]. With no path a client gets the default policy: `serve --default-policy droid_wam`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from openpi_client import msgpack_numpy as openpi_msgpack_numpy
from websockets.sync.client import connect

from .conftest import front_settings, http_get, running_front, settled_statistics

pytestmark = pytest.mark.integration

RECV_TIMEOUT_S = 60
PROMPT = "put the marker in the cup"


class RoboArenaClient:
    """RoboArena's evaluation side of the wire: observations as its PolicyServerConfig asks for them."""

    def __init__(self, url: str) -> None:
        self.ws = connect(url, compression=None, max_size=None, open_timeout=30)
        self.config = openpi_msgpack_numpy.unpackb(self.ws.recv(timeout=RECV_TIMEOUT_S))

    def observation(self, rng: np.random.Generator, session_id: str | None, size: tuple[int, int] | None = None,
                    **extra: Any) -> dict[str, Any]:
        height, width = size or self.config["image_resolution"]
        obs: dict[str, Any] = {
            f"observation/exterior_image_{i}_left": rng.integers(0, 256, (height, width, 3), np.uint8)
            for i in range(self.config["n_external_cameras"])
        }
        if self.config["needs_wrist_camera"]:
            obs["observation/wrist_image_left"] = rng.integers(0, 256, (height, width, 3), np.uint8)
        obs |= {"observation/joint_position": rng.normal(size=7), "observation/cartesian_position": rng.normal(size=6),
                "observation/gripper_position": rng.uniform(0, 1, size=1), "prompt": PROMPT}
        if self.config["needs_session_id"] and session_id is not None:
            obs["session_id"] = session_id
        return obs | extra

    def _send(self, message: dict[str, Any]) -> bytes | str:
        self.ws.send(openpi_msgpack_numpy.packb(message))
        return self.ws.recv(timeout=RECV_TIMEOUT_S)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        reply = self._send({**obs, "endpoint": "infer"})
        if isinstance(reply, str):
            raise RuntimeError(reply)
        return openpi_msgpack_numpy.unpackb(reply)

    def reset(self, info: dict[str, Any]) -> bytes | str:
        return self._send({**info, "endpoint": "reset"})

    def close(self) -> None:
        self.ws.close()


class DreamZeroClient:
    """MolmoSpaces' DreamZero client: msgpack-numpy (PyPI) both ways, no path, a session per episode."""

    def __init__(self, base_url: str) -> None:
        self.ws = connect(base_url, compression=None, max_size=None, open_timeout=30)
        self.metadata = self._decode(self.ws.recv(timeout=RECV_TIMEOUT_S))
        self.raw_reply: bytes = b""
        self.reset()

    @staticmethod
    def _decode(data: bytes) -> Any:
        return msgpack.unpackb(data, object_hook=msgpack_numpy.decode)

    def reset(self) -> None:
        self.session_id = str(uuid.uuid4())  # a new episode: a new session id, nothing sent

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        message = {**obs, "endpoint": "infer", "session_id": self.session_id}
        self.ws.send(msgpack.packb(message, default=msgpack_numpy.encode))
        reply = self.ws.recv(timeout=RECV_TIMEOUT_S)
        if isinstance(reply, str):
            raise RuntimeError(reply)
        self.raw_reply = reply
        return self._decode(reply)

    def close(self) -> None:
        self.ws.close()


def dreamzero_observation(rng: np.random.Generator, **extra: Any) -> dict[str, Any]:
    """As MolmoSpaces sends it: the same exterior frame twice, float64 joints, zero cartesian pose."""
    exterior = rng.integers(0, 256, (180, 320, 3), np.uint8)
    return {
        "observation/exterior_image_0_left": exterior,
        "observation/exterior_image_1_left": exterior,
        "observation/wrist_image_left": rng.integers(0, 256, (180, 320, 3), np.uint8),
        "observation/joint_position": rng.normal(size=7).astype(np.float64),
        "observation/cartesian_position": np.zeros(6, np.float64),
        "observation/gripper_position": np.array([0.3], np.float64),
        "prompt": PROMPT,
    } | extra


@pytest.fixture(scope="module")
def wam_front(triton):
    """A front whose default policy is droid_wam (`serve --default-policy droid_wam`): path-less clients."""
    with running_front(front_settings(triton, default_policy="droid_wam")) as url:
        yield url


# --- RoboArena --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "/v1/realtime/robot/openpi/droid_wam"])
def test_roboarena_client_two_episodes_with_a_reset_between(wam_front, path):
    client = RoboArenaClient(wam_front + path)
    assert client.config == {"image_resolution": [180, 320], "needs_wrist_camera": True, "n_external_cameras": 2,
                             "needs_stereo_camera": False, "needs_session_id": True, "action_space": "joint_position"}
    rng = np.random.default_rng(0)
    first = client.observation(rng, "eval-7", seed=3)
    episode_1 = [client.infer(first)] + [client.infer(client.observation(rng, "eval-7")) for _ in range(2)]
    for actions in episode_1:
        assert isinstance(actions, np.ndarray) and actions.shape == (24, 8) and actions.dtype == np.float32
        assert np.isfinite(actions).all()
    assert client.reset({"session_id": "eval-7", "success": 1.0, "duration": 12}) == "reset successful"
    # The same first observation after the reset: the history restarted, so the same seed gives the same
    # actions; on the second call of an episode the history (2 frames) changes them.
    again = client.infer(first)
    np.testing.assert_array_equal(again, episode_1[0])
    assert not np.array_equal(client.infer(first), again)
    # Any camera size: resized on the server.
    assert client.infer(client.observation(rng, "eval-7", size=(480, 640))).shape == (24, 8)
    client.close()


def test_roboarena_infer_without_a_session_id_is_refused_and_the_connection_stays(wam_front):
    client = RoboArenaClient(wam_front)
    rng = np.random.default_rng(1)
    with pytest.raises(RuntimeError, match="needs a 'session_id'"):
        client.infer(client.observation(rng, None))
    assert client.infer(client.observation(rng, "eval-8")).shape == (24, 8)
    client.close()


# --- MolmoSpaces' DreamZero client ------------------------------------------------------------------


def test_molmospaces_dreamzero_client_with_no_path(wam_front):
    client = DreamZeroClient(wam_front)
    assert client.metadata["needs_session_id"] is True
    rng = np.random.default_rng(2)
    for _episode in range(2):
        client.reset()
        frames = []
        for _ in range(3):
            result = client.infer(dreamzero_observation(rng))
            assert result["actions"].shape == (24, 8) and result["actions"].dtype == np.float32
            frames.append(int(result["frames"][0]))
            # msgpack-numpy's markers on the wire, not openpi-client's.
            raw = msgpack.unpackb(client.raw_reply)
            assert raw["actions"][b"nd"] is True and "__ndarray__" not in raw["actions"]
        assert frames == [1, 2, 3]  # a new session id per episode: a new history
    client.close()


# --- statefulness -------------------------------------------------------------------------------------


def test_two_robots_interleaving_sessions_see_only_their_own_history(wam_front):
    a, b = DreamZeroClient(wam_front), DreamZeroClient(wam_front)
    b.session_id = a.session_id  # even under the same id: a session belongs to its connection
    rng = np.random.default_rng(3)

    def frames(client: DreamZeroClient) -> int:
        return int(client.infer(dreamzero_observation(rng))["frames"][0])

    assert [frames(a), frames(b), frames(a), frames(a), frames(b), frames(a), frames(a)] == [1, 1, 2, 3, 2, 4, 4]
    b.reset()
    assert [frames(b), frames(a), frames(b)] == [1, 4, 2]
    a.close(), b.close()


def held_sessions(client: grpcclient.InferenceServerClient) -> int:
    """How many sessions droid_wam's model holds, asked directly of Triton by a one-call sequence of its own
    (started and ended in that call, so not counted)."""
    inputs = []
    arrays = {name: np.zeros((1, 8, 8, 3), np.uint8)
              for name in ("exterior_image_0_left", "exterior_image_1_left", "wrist_image_left")}
    arrays |= {"joint_position": np.zeros((1, 7), np.float32), "cartesian_position": np.zeros((1, 6), np.float32),
               "gripper_position": np.zeros((1, 1), np.float32), "seed": np.zeros((1, 1), np.int64),
               "prompt": np.array([[b"observe"]], dtype=object)}
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else
                                       {np.uint8: "UINT8", np.float32: "FP32", np.int64: "INT64"}[array.dtype.type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("droid_wam", inputs, outputs=[grpcclient.InferRequestedOutput("held_sessions")],
                          sequence_id=int(uuid.uuid4().int % 2**62) + 1, sequence_start=True, sequence_end=True,
                          client_timeout=60)
    return int(result.as_numpy("held_sessions")[0, 0])


def settled_held_sessions(client: grpcclient.InferenceServerClient, timeout_s: float = 10) -> int:
    """held_sessions once two readings agree (the sequences of robots that just left end asynchronously)."""
    deadline, previous = time.monotonic() + timeout_s, None
    while True:
        held = held_sessions(client)
        if held == previous or time.monotonic() > deadline:
            return held
        previous = held
        time.sleep(0.3)


def test_the_model_frees_a_session_on_new_session_id_reset_and_disconnect(wam_front, triton):
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    base = settled_held_sessions(grpc)
    client = DreamZeroClient(wam_front)
    rng = np.random.default_rng(9)
    client.infer(dreamzero_observation(rng)), client.infer(dreamzero_observation(rng))
    assert held_sessions(grpc) == base + 1
    client.reset()  # a new session id: the old session ends, the new one starts
    assert int(client.infer(dreamzero_observation(rng))["frames"][0]) == 1
    assert held_sessions(grpc) == base + 1
    client.ws.send(msgpack.packb({"endpoint": "reset"}))
    assert client.ws.recv(timeout=RECV_TIMEOUT_S) == "reset successful"
    assert held_sessions(grpc) == base
    client.infer(dreamzero_observation(rng))
    assert held_sessions(grpc) == base + 1
    client.close()
    assert settled_held_sessions(grpc) == base


def test_a_new_prompt_restarts_the_history(wam_front):
    client = DreamZeroClient(wam_front)
    rng = np.random.default_rng(10)
    frames = [int(client.infer(dreamzero_observation(rng, prompt=prompt))["frames"][0])
              for prompt in ("open the drawer", "open the drawer", "close the drawer", "close the drawer")]
    assert frames == [1, 2, 1, 2]
    client.close()


def test_an_empty_camera_frame_is_refused_and_the_history_keeps_going(wam_front):
    client = DreamZeroClient(wam_front)
    rng = np.random.default_rng(8)
    assert int(client.infer(dreamzero_observation(rng))["frames"][0]) == 1
    empty = dreamzero_observation(rng) | {"observation/exterior_image_0_left": np.zeros((0, 0, 3), np.uint8)}
    with pytest.raises(RuntimeError, match="camera 'exterior_image_0_left'"):
        client.infer(empty)
    assert int(client.infer(dreamzero_observation(rng))["frames"][0]) == 2
    client.close()


def test_roboarena_reset_restarts_the_history(wam_front):
    """The map answer (msgpack-numpy markers) shows the count; a reset ends the session there too."""
    client = DreamZeroClient(wam_front)
    rng = np.random.default_rng(4)
    assert [int(client.infer(dreamzero_observation(rng))["frames"][0]) for _ in range(2)] == [1, 2]
    client.ws.send(msgpack.packb({"endpoint": "reset", "session_id": client.session_id}))
    assert client.ws.recv(timeout=RECV_TIMEOUT_S) == "reset successful"
    assert int(client.infer(dreamzero_observation(rng))["frames"][0]) == 1
    client.close()


def test_sixteen_sessions_at_once_batch_in_the_policy_core(wam_front, triton):
    stats = grpcclient.InferenceServerClient(triton.grpc_url)

    def batched_executions() -> int:
        core = settled_statistics(stats, "policy_core")
        return sum(batch.compute_infer.count for batch in core.batch_stats if batch.batch_size > 1)

    before = batched_executions()
    robots = [DreamZeroClient(wam_front) for _ in range(16)]
    barrier = threading.Barrier(16, timeout=60)
    seen: dict[int, list[int]] = {}

    def run(index: int, client: DreamZeroClient) -> None:
        rng = np.random.default_rng(100 + index)
        barrier.wait()
        seen[index] = [int(client.infer(dreamzero_observation(rng))["frames"][0]) for _ in range(3)]

    threads = [threading.Thread(target=run, args=(i, robot)) for i, robot in enumerate(robots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert seen == {i: [1, 2, 3] for i in range(16)}
    assert batched_executions() > before, "no batch of more than one request reached the policy core"
    for robot in robots:
        robot.close()


def test_live_sessions_are_capped_and_freed_on_disconnect(triton):
    with running_front(front_settings(triton, default_policy="droid_wam", max_live_sessions=2)) as url:
        rng = np.random.default_rng(5)
        first, second, third = (DreamZeroClient(url) for _ in range(3))
        first.infer(dreamzero_observation(rng)), second.infer(dreamzero_observation(rng))
        with pytest.raises(RuntimeError, match="limit of 2 live sessions"):
            third.infer(dreamzero_observation(rng))
        first.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert third.infer(dreamzero_observation(rng))["actions"].shape == (24, 8)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        second.close(), third.close()


def test_the_example_is_listed(wam_front):
    import json

    status, body = http_get(wam_front, "/v1/policies")
    policies = {p["name"]: p for p in json.loads(body)["policies"]}
    assert status == 200 and json.loads(body)["default"] == "droid_wam"
    wam = policies["droid_wam"]
    assert wam["stateful"] and wam["metadata"]["n_external_cameras"] == 2
    assert wam["answers"]["infer"] == {"openpi": "bare", "msgpack_numpy": "map"}
    assert "observation/cartesian_position" in wam["observation"]


def test_the_client_encoding_is_stated_in_a_log_line(wam_front, caplog):
    caplog.set_level(logging.INFO, logger="openpi_triton.front")
    dreamzero, roboarena = DreamZeroClient(wam_front), RoboArenaClient(wam_front)
    dreamzero.infer(dreamzero_observation(np.random.default_rng(6)))
    roboarena.infer(roboarena.observation(np.random.default_rng(7), "eval-9"))
    dreamzero.close(), roboarena.close()
    decided = [record for record in caplog.records if record.getMessage().startswith("client encoding")]
    assert {record.encoding for record in decided} >= {"msgpack_numpy", "openpi"}
    assert any("msgpack-numpy's nd array markers" in record.getMessage() for record in decided)
