"""Fault injection on real processes: `openpi-triton serve` (the front and its embedded tritonserver) with
robots on the real openpi_client, while tritonserver is killed, a python stub is killed, or the server
gets SIGTERM with inferences in flight.

Each wait is bounded (tens of seconds, generous for two slow cores); nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed

from openpi_triton.process import children, die_with_parent, free_port, group_members
from openpi_triton.triton.embedded import python_stubs_of, shared_memory_regions_of

from .conftest import MODEL_REPOSITORY, TEST_MODEL_REPOSITORY
from .robots import counter_step, fleet
from .waiting import wait_until

pytestmark = pytest.mark.integration

DELAY_S = 10.0  # of each frame in the drain test: far longer than 8 robots take to send theirs


# --- a served front, and what runs under it ---------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except (urllib.error.URLError, OSError) as error:
            return 0, str(error)

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the front's /metrics (0 when absent)."""
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.M)
        for found_labels, value in pattern.findall(self.http("/metrics")[1]):
            if found_labels == wanted:
                return float(value)
        return 0.0

    def tritonserver(self) -> int:
        """The pid of the tritonserver the front runs now (its child)."""
        found = children(self.process.pid, "tritonserver")
        assert found, f"no tritonserver under the front; log:\n{self.log_tail()}"
        return found[0]

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def stub_of(triton_pid: int, model: str) -> int:
    """The python-backend stub of `model` under a tritonserver."""
    stubs = [pid for pid, name in python_stubs_of(triton_pid).items() if name == model]
    assert stubs, f"no stub of {model} in tritonserver {triton_pid}'s group"
    return stubs[0]


def _repository(root: Path, model_onnx: Path) -> Path:
    """The shipped repository and the test models in one (tritonserver is started on one repository)."""
    repo = root / "repo"
    shutil.copytree(MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("model.onnx", "__pycache__"))
    (repo / "policy_core" / "1" / "model.onnx").symlink_to(model_onnx)
    for model in ("slow_policy", "session_counter"):
        shutil.copytree(TEST_MODEL_REPOSITORY / model, repo / model, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


@contextlib.contextmanager
def serving(root: Path, model_onnx: Path, *flags: str) -> Iterator[Served]:
    """`openpi-triton serve` on free ports until ready; stopped (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    log = root / "serve.log"
    command = [sys.executable, "-m", "openpi_triton", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--model-repository", str(_repository(root, model_onnx)),
               "--triton-grpc-port", str(free_port()), "--triton-http-port", str(free_port()),
               "--triton-metrics-port", str(free_port()), "--triton-restart-delay", "0.5", *flags]
    with open(log, "wb") as output:
        process = subprocess.Popen(die_with_parent(command), stdout=output, stderr=subprocess.STDOUT)
    served = Served(process, port, log)
    try:
        wait_until(lambda: served.http("/readyz")[0] == 200 or process.poll() is not None, "the server is ready", 180)
        assert process.poll() is None, f"serve exited:\n{served.log_tail()}"
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_onnx) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("faults"), model_onnx) as server:
        yield server


# --- the faults --------------------------------------------------------------------------------------


def test_a_killed_tritonserver_is_replaced_and_robots_keep_their_websocket(served):
    stateful = WebsocketClientPolicy(host=f"ws://{served.url}/v1/realtime/robot/openpi/session_counter")
    assert [counter_step(stateful) for _ in range(2)] == [1, 2]
    with fleet(served.url, {"libero": 3, "droid": 1}) as robots:
        old = served.tritonserver()
        stubs, regions = group_members(old), shared_memory_regions_of(old)
        assert len(stubs) > 1 and regions
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)

        wait_until(lambda: all(robot.recovered_since(killed_at) for robot in robots),
                   "every robot had an error during the outage, then actions again", 120)
        for robot in robots:
            kinds = {kind for _, kind, _ in robot.after(killed_at)}
            assert kinds <= {"ok", "error"}, f"a robot lost its websocket or got non-finite actions: {kinds}"
            errors = [text for _, kind, text in robot.after(killed_at) if kind == "error"]
            assert all("policy backend unavailable" in text for text in errors), errors

    assert served.tritonserver() != old
    assert not [pid for pid in stubs if pid in group_members(old)], "a process of the dead tritonserver survived"
    assert not [region for region in regions if region.exists()], "the dead tritonserver's shared memory is left"
    assert served.metric("openpi_triton_backend_restarts_total") == 1
    assert served.metric("openpi_triton_outages_total", component="tritonserver") == 1
    wait_until(lambda: served.http("/readyz")[0] == 200, "/readyz (refreshed every second) is ready", 30)

    # The stateful session's memory died with tritonserver: it is told so once, then starts over.
    with pytest.raises(RuntimeError, match="lost this session's state"):
        counter_step(stateful)
    assert counter_step(stateful) == 1


def test_a_killed_python_stub_is_reloaded_while_other_policies_keep_serving(served):
    readiness: list[tuple[int, str]] = []
    polling = threading.Event()

    def poll_readiness() -> None:
        while not polling.is_set():
            readiness.append(served.http("/readyz"))
            time.sleep(0.05)

    with fleet(served.url, {"libero": 2, "droid": 1}) as robots:
        triton = served.tritonserver()
        poller = threading.Thread(target=poll_readiness, daemon=True)
        poller.start()
        killed_at = time.monotonic()
        os.kill(stub_of(triton, "libero_preprocess"), signal.SIGKILL)
        libero_robots = [robot for robot in robots if robot.policy == "libero"]
        wait_until(lambda: all(robot.recovered_since(killed_at) for robot in libero_robots),
                   "the LIBERO robots had an error, then actions again", 120)
        wait_until(lambda: readiness and readiness[-1][0] == 200, "ready again", 60)
        polling.set()
        poller.join(30)
        droid_robot = next(robot for robot in robots if robot.policy == "droid")
        assert droid_robot.served_since(killed_at)
        droid_outcomes = {kind for _, kind, _ in droid_robot.after(killed_at)}

    errors = [text for robot in libero_robots for _, kind, text in robot.after(killed_at) if kind == "error"]
    assert errors and all("policy backend unavailable" in text for text in errors), errors
    assert any("libero_preprocess" in text for text in errors), errors
    down = [body for status, body in readiness if status == 503]
    assert any("policy 'libero'" in body and "libero_preprocess" in body for body in down), readiness
    # One model reloaded, not the server restarted: the other policies never noticed.
    assert droid_outcomes == {"ok"}, f"the DROID robot was disturbed: {droid_outcomes}"
    assert served.tritonserver() == triton
    assert served.metric("openpi_triton_model_reloads_total", model="libero_preprocess") == 1
    assert served.metric("openpi_triton_outages_total", component="libero_preprocess") == 1


def test_sigterm_answers_every_inference_in_flight_then_closes_with_1012(tmp_path, model_onnx):
    """The drain rule on real processes (tests/test_connection.py has it exactly): the 8 frames the front has
    read when SIGTERM comes are answered, and each robot's next frame gets close 1012. Each frame takes
    `DELAY_S` in the policy, so all 8 are in flight together however slowly the robots' threads start, and
    still in flight when the signal comes; the drain and Triton timeouts cover several executions of it."""
    robots = 8
    with serving(tmp_path, model_onnx, "--drain-timeout", "120", "--triton-timeout", "60") as served:
        clients = [WebsocketClientPolicy(host=f"ws://{served.url}/v1/realtime/robot/openpi/slow_policy")
                   for _ in range(robots)]
        answers: list[Any] = [None] * robots
        after: list[Any] = [None] * robots

        def robot(i: int) -> None:
            answers[i] = clients[i].infer({"delay": np.array([DELAY_S], np.float32)})
            try:
                clients[i].infer({"delay": np.array([0.0], np.float32)})
            except ConnectionClosed as closed:
                after[i] = closed

        threads = [threading.Thread(target=robot, args=(i,), daemon=True) for i in range(robots)]
        for thread in threads:
            thread.start()
        wait_until(lambda: served.metric("openpi_triton_in_flight_requests") == robots, "8 frames in flight", 60)
        triton = served.tritonserver()
        regions = shared_memory_regions_of(triton)
        served.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(150)
        assert not any(thread.is_alive() for thread in threads), "a robot is still waiting after the drain"
        assert served.process.wait(60) == 0, served.log_tail()

    assert all(isinstance(answer, dict) and answer["echo"][0] == DELAY_S for answer in answers), answers
    codes = [closed.rcvd.code if closed is not None and closed.rcvd else None for closed in after]
    assert codes == [1012] * robots, codes
    assert not group_members(triton), "tritonserver or a stub outlived the front"
    assert not [region for region in regions if region.exists()]
    assert "tritonserver stopped" in served.log_tail()
