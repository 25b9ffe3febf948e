"""Real-time chunking served: a tiny SmolVLA through a real tritonserver and the websocket front, driven by the
stock openpi_client with `rtc/*` keys; answers compared with LeRobot in-process (tests/test_rtc.py checks that
our in-process RTC is LeRobot's, row by row)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from openpi_triton.front.observations import observation_to_tensors
from openpi_triton.front.rtc import RtcRequest, rtc_tensors
from openpi_triton.process import free_port
from openpi_triton.triton.policy import policy_from_config

from .conftest import front_settings, http_get, running_front

pytestmark = pytest.mark.integration
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def front(lerobot_triton) -> Iterator[str]:
    with running_front(front_settings(lerobot_triton, default_policy="smol", gr00t_port=free_port())) as url:
        yield url


def client(front: str) -> WebsocketClientPolicy:
    return WebsocketClientPolicy(host=f"{front}/v1/realtime/robot/openpi/smol")


def so100(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"observation.images.front": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 256, (40, 64, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=6).astype(np.float32),
            "task": "pick up the red cube", "seed": 1000 + seed}


def in_process(runner: Any, obs: dict[str, Any], leftover: np.ndarray | None = None, delay: int = 0) -> np.ndarray:
    batch: dict[str, Any] = {key: torch.from_numpy(value).permute(2, 0, 1).float().div(255)[None]
                             for key, value in obs.items() if key.startswith("observation.images.")}
    batch["observation.state"] = torch.from_numpy(obs["observation.state"])[None]
    batch["task"] = [obs["task"]]
    rtc = None
    if leftover is not None:
        padded = np.zeros((1, 10, 6), np.float32)
        padded[0, :len(leftover)] = leftover
        rtc = (padded, [len(leftover)], [delay])
    return runner.run_batch(batch, [obs["seed"]], rtc)[0]


def test_handshake_and_policy_list_say_rtc(front) -> None:
    rtc = client(front).get_server_metadata()["rtc"]
    assert rtc["supported"] is True and rtc["execution_horizon"] == 10
    assert rtc["prefix_attention_schedule"] == "LINEAR" and rtc["max_guidance_weight"] == 10.0
    assert rtc["chunk_size"] == 10 and rtc["action_dim"] == 6
    assert rtc["keys"]["remembered"] == ["rtc/executed", "rtc/delay"]
    status, body = http_get(front, "/v1/policies")
    listed = json.loads(body)
    entries = listed["policies"] if isinstance(listed, dict) else listed
    assert status == 200 and next(e for e in entries if e["name"] == "smol")["rtc"]["supported"] is True


def test_explicit_rtc_is_lerobots_rtc_and_follows_the_leftover(front, smolvla_runner) -> None:
    robot = client(front)
    previous = robot.infer(so100(0))["actions"]
    leftover, delay = previous[3:], 2
    obs = so100(1)
    plain = robot.infer(dict(obs))["actions"]
    guided = robot.infer({**obs, "rtc/leftover": leftover, "rtc/delay": delay})["actions"]
    np.testing.assert_allclose(plain, in_process(smolvla_runner, obs), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(guided, in_process(smolvla_runner, obs, leftover, delay), atol=TOLERANCE, rtol=0)
    assert np.abs(guided[:delay] - leftover[:delay]).mean() < np.abs(plain[:delay] - leftover[:delay]).mean()


def test_remembered_mode_equals_explicit_mode(front) -> None:
    remembered, explicit = client(front), client(front)
    first = remembered.infer(so100(2))["actions"]
    assert np.array_equal(explicit.infer(so100(2))["actions"], first)
    obs = so100(3)
    by_count = remembered.infer({**obs, "rtc/executed": 4, "rtc/delay": 3})["actions"]
    by_leftover = explicit.infer({**obs, "rtc/leftover": first[4:], "rtc/delay": 3})["actions"]
    np.testing.assert_allclose(by_count, by_leftover, atol=1e-6, rtol=0)
    # The session now remembers the newest chunk: continuing it differs from continuing the first one.
    again = remembered.infer({**obs, "rtc/executed": 4, "rtc/delay": 3})["actions"]
    assert np.abs(again - by_count).max() > 1e-3


def triton_inputs(per_row: list[dict[str, np.ndarray]]) -> list[Any]:
    inputs = []
    for name in per_row[0]:
        stacked = np.concatenate([row[name] for row in per_row])
        tensor = grpcclient.InferInput(name, list(stacked.shape), "BYTES" if stacked.dtype == object else
                                       {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32",
                                        np.dtype(np.int64): "INT64"}[stacked.dtype])
        tensor.set_data_from_numpy(stacked)
        inputs.append(tensor)
    return inputs


def test_python_model_refuses_rtc_rows_that_make_no_sense(lerobot_triton) -> None:
    """What the front checks is checked again where RTC runs (for anyone calling Triton directly)."""
    grpc = grpcclient.InferenceServerClient(lerobot_triton.grpc_url)
    policy = policy_from_config(grpc.get_model_config("smol", as_json=True)["config"])
    obs = so100(20)
    tensors = observation_to_tensors(policy, {k: v for k, v in obs.items() if k != "seed"}, obs["seed"])
    tensors.update(rtc_tensors(policy.rtc, RtcRequest(np.zeros((4, 6), np.float32), 2)))
    tensors[policy.rtc.delay][:] = 7
    with pytest.raises(Exception, match="RTC delay 7 outside"):
        grpc.infer("smol", triton_inputs([tensors]), client_timeout=120)
    tensors[policy.rtc.delay][:] = 2
    assert grpc.infer("smol", triton_inputs([tensors]), client_timeout=120).as_numpy("actions").shape == (1, 10, 6)


def test_one_triton_batch_of_mixed_rows_gives_each_robot_its_own_answer(front, lerobot_triton) -> None:
    """Four rows in ONE Triton request (so certainly one batch of the python model): no RTC, two delays and
    leftover lengths, each equal to what that robot gets alone through the websocket."""
    grpc = grpcclient.InferenceServerClient(lerobot_triton.grpc_url)
    policy = policy_from_config(grpc.get_model_config("smol", as_json=True)["config"])
    assert policy.rtc is not None
    previous = client(front).infer(so100(4))["actions"]
    rows = [None, RtcRequest(previous[2:], 1), RtcRequest(previous[5:], 4), RtcRequest(previous[2:], 3)]
    observations = [so100(10 + i) for i in range(4)]
    per_row = []
    for obs, request in zip(observations, rows, strict=True):
        tensors = observation_to_tensors(policy, {k: v for k, v in obs.items() if k != "seed"}, obs["seed"])
        tensors.update(rtc_tensors(policy.rtc, request))
        per_row.append(tensors)
    inputs = triton_inputs(per_row)
    batched = grpc.infer("smol", inputs, client_timeout=120).as_numpy("actions")
    robot = client(front)
    for i, (obs, request) in enumerate(zip(observations, rows, strict=True)):
        keys = {} if request is None else {"rtc/leftover": request.leftover, "rtc/delay": request.delay}
        alone = robot.infer({**obs, **keys})["actions"]
        np.testing.assert_allclose(batched[i], alone, atol=TOLERANCE, rtol=0, err_msg=f"row {i}")


@pytest.mark.parametrize(("keys", "error"), [
    ({"rtc/executed": 2, "rtc/delay": 1}, "no answered chunk yet"),
    ({"rtc/leftover": np.zeros((4, 5), np.float32), "rtc/delay": 1}, r"must be \[n, 6\]"),
    ({"rtc/leftover": np.zeros((4, 6), np.float32), "rtc/delay": 7}, "rtc/delay 7"),
])
def test_bad_rtc_frames_get_clear_errors_and_keep_the_connection(front, keys: dict, error: str) -> None:
    robot = client(front)
    with pytest.raises(RuntimeError, match=error):
        robot.infer({**so100(5), **keys})
    assert robot.infer(so100(5))["actions"].shape == (10, 6)
    with pytest.raises(RuntimeError, match=r"rtc/executed 10: .* \[0, 9\]"):
        robot.infer({**so100(5), "rtc/executed": 10, "rtc/delay": 0})


@pytest.mark.parametrize("mode", ["remembered", "explicit"])
def test_realtime_robot_runs_with_rtc(front, mode: str) -> None:
    """The demo client's real-time loop on the served policy: it measures delays, sends RTC keys the server
    accepts, and switches chunks at the measured delay."""
    from openpi_triton.loadgen.realtime import RealtimeRobot, lerobot_observer

    robot = client(front)
    report = RealtimeRobot(robot, lerobot_observer(robot.get_server_metadata()), control_hz=20, mode=mode,
                           replan_after=3).run(6.0)
    assert report.errors == []
    assert len(report.latencies_ms) >= 3 and report.jumps and report.inner_steps
    assert all(delay >= 0 for delay in report.delays)


def test_demo_client_realtime_mode(front) -> None:
    import subprocess
    import sys

    port = front.rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "openpi_triton", "client", "--realtime", "--policy", "smol",
                             "--host", "127.0.0.1", "--port", port, "--seconds", "4", "--control-hz", "20"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "RTC remembered: latency p50" in result.stdout and "boundary jump mean" in result.stdout
    assert "refused" not in result.stderr
