"""GR00T clients end to end: the front's GR00T endpoint on a real tritonserver, driven by a client written to
GR00T's wire protocol (ZeroMQ REQ, msgpack, np.save arrays), beside stock openpi_client robots."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import zmq
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from zmq.utils.monitor import parse_monitor_message

from openpi_triton.cli import bench as bench_command
from openpi_triton.example_observations import libero, so100
from openpi_triton.loadgen.fleet import ServerError
from openpi_triton.loadgen.gr00t import Gr00tClient, action_data, pack_request
from openpi_triton.process import free_port

from .conftest import front_settings, running_front, settled_statistics
from .test_front import http_get
from .waiting import run_threads, wait_until

pytestmark = pytest.mark.integration

ARM, GRIPPER = (16, 5), (16, 1)
ROUNDS = 5  # of the cross-protocol batching scenario, until the two small requests meet in the core's queue


@contextlib.contextmanager
def gr00t_front(triton, **overrides) -> Iterator[tuple[str, int]]:
    """A front with the GR00T endpoint on; yields (its ws:// URL, the GR00T port)."""
    settings = front_settings(triton, gr00t_port=free_port(), **overrides)
    with running_front(settings) as url:
        yield url, settings.gr00t_port


@pytest.fixture(scope="module")
def endpoint(triton) -> Iterator[tuple[str, int]]:
    with gr00t_front(triton) as served:
        yield served


@pytest.fixture
def client(endpoint) -> Iterator[Gr00tClient]:
    with Gr00tClient("127.0.0.1", endpoint[1], timeout_ms=60_000) as gr00t:
        yield gr00t


def observation(seed: int = 0) -> dict:
    return so100(np.random.default_rng(seed))


def three_arms_for_two_cameras() -> dict:
    data = action_data(observation(), "n1.6", 2)
    data["observation"]["state"]["single_arm"] = np.zeros((3, 1, 5))
    return data


def test_ping_and_the_n16_modality_config(client):
    assert client.ping() == {"status": "ok", "message": "Server is running"}
    config = client.get_modality_config()
    assert config["video"]["modality_keys"] == ["front", "wrist"]
    assert config["action"]["modality_keys"] == ["single_arm", "gripper"]
    assert len(config["action"]["delta_indices"]) == ARM[0]
    assert config["language"]["modality_keys"] == ["annotation.human.task_description"]


def test_n16_batched_request_gets_action_and_info(client):
    action, info = client.get_action(observation(), "n1.6", environments=3)
    assert info == {} and set(action) == {"single_arm", "gripper"}
    assert action["single_arm"].shape == (3, *ARM) and action["gripper"].shape == (3, *GRIPPER)
    assert action["single_arm"].dtype == np.float32 and np.isfinite(action["single_arm"]).all()
    # Each environment is its own row with its own sampling noise.
    assert not np.allclose(action["single_arm"][0], action["single_arm"][1])


def test_n15_unbatched_request_gets_squeezed_flat_actions(client):
    action = client.get_action(observation(), "n1.5")
    assert set(action) == {"action.single_arm", "action.gripper"}
    assert action["action.single_arm"].shape == ARM and action["action.gripper"].shape == (16,)


def test_n15_batched_request_keeps_the_environment_axis(client):
    action = client.get_action(observation(), "n1.5", environments=2)
    assert action["action.single_arm"].shape == (2, *ARM) and action["action.gripper"].shape == (2, *GRIPPER)


def test_more_environments_than_a_triton_batch_are_split_and_answered_together(client, triton):
    stats = grpcclient.InferenceServerClient(triton.grpc_url)
    before = settled_statistics(stats, "so100")
    action, _ = client.get_action(observation(), "n1.6", environments=20)  # the ensemble's max_batch_size is 16
    assert action["single_arm"].shape == (20, *ARM)
    after = settled_statistics(stats, "so100", before.inference_count + 20)
    assert after.inference_count - before.inference_count == 20
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2  # Triton requests


@pytest.mark.parametrize(("body", "message"), [
    (b"\xc1\x00", "not valid msgpack"),
    (b"PK\x03\x04" + b"\0" * 64, "torch.save (pickle) payload"),
    (pack_request("teleport"), "Unknown endpoint: 'teleport'"),
    (pack_request("kill"), "kill is refused"),
    (pack_request("get_action", {"observation": {**{k: v for k, v in observation().items() if k != "state.gripper"}}}),
     "needs observation keys ['state.gripper']"),
    (pack_request("get_action", {**observation(), "state.single_arm": np.zeros((1, 7))}),
     "key 'state.single_arm': expected float32 of shape [1, 5], got float64 of shape [1, 7]"),
    (pack_request("get_action", three_arms_for_two_cameras()), "expected 2 environments of float32 of shape [1, 5]"),
    (pack_request("get_action", {"observation": {}, "options": None, "seed": 3}), "unexpected arguments ['seed']"),
])
def test_bad_requests_get_an_error_reply_and_the_socket_keeps_serving(client, body, message):
    reply = client.raw(body)
    assert set(reply) == {"error"} and message in reply["error"], reply
    assert client.get_action(observation(), "n1.5")["action.single_arm"].shape == ARM  # the same socket


def test_an_oversized_request_drops_only_that_client(triton):
    with gr00t_front(triton, max_frame_bytes=64 * 1024) as (_, port), zmq.Context() as context:
        big = context.socket(zmq.REQ)
        big.setsockopt(zmq.LINGER, 0)
        monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        big.connect(f"tcp://127.0.0.1:{port}")
        big.send(pack_request("ping", {"padding": b"\0" * 100_000}))
        assert monitor.poll(10_000), "the server kept the client that sent 100 kB over a 64 kB limit"
        assert parse_monitor_message(monitor.recv_multipart())["event"] == zmq.EVENT_DISCONNECTED
        assert not big.poll(500), "a request over the limit got a reply"
        with Gr00tClient("127.0.0.1", port) as other:
            assert other.ping()["status"] == "ok"
        monitor.close()
        big.close()


def test_api_tokens_are_checked_against_the_api_keys(triton):
    with gr00t_front(triton, api_keys=("secret-key",)) as (_, port):
        for token in (None, "wrong"):
            with Gr00tClient("127.0.0.1", port, api_token=token) as stranger, \
                    pytest.raises(ServerError, match="Unauthorized: Invalid API token"):
                stranger.ping()
        with Gr00tClient("127.0.0.1", port, api_token="secret-key") as member:
            assert member.ping()["status"] == "ok"
            assert member.get_action(observation(), "n1.6", environments=1)[0]["gripper"].shape == (1, *GRIPPER)


def test_client_limit_counts_clients_until_they_disconnect(triton):
    with gr00t_front(triton, max_connections=2) as (_, port):
        first, second = Gr00tClient("127.0.0.1", port), Gr00tClient("127.0.0.1", port)
        assert first.ping()["status"] == second.ping()["status"] == "ok"
        with Gr00tClient("127.0.0.1", port) as third:
            with pytest.raises(ServerError, match="at its limit of 2 GR00T clients"):
                third.ping()
            first.close()  # its slot frees when its connection closes

            def served() -> bool:
                try:
                    return third.ping()["status"] == "ok"
                except ServerError:
                    return False

            wait_until(served, "the third client is served once the first has left", interval_s=0.1)
        second.close()


def test_n15_modality_form_is_a_setting(triton):
    with gr00t_front(triton, gr00t_modality_form="n1.5") as (_, port), Gr00tClient("127.0.0.1", port) as gr00t:
        config = gr00t.get_modality_config()
        assert config["video"] == {"delta_indices": [0], "modality_keys": ["video.front", "video.wrist"]}
        assert config["action"]["modality_keys"] == ["action.single_arm", "action.gripper"]


def test_the_openpi_websocket_serves_the_gr00t_policy_too(endpoint, open_robot):
    robot = open_robot(endpoint[0], "/v1/realtime/robot/openpi/so100")
    result = robot.infer(observation())
    assert result["action.single_arm"].shape == ARM and result["action.gripper"].shape == GRIPPER


def test_sixteen_gr00t_and_sixteen_openpi_robots_share_the_policy_core(endpoint, triton, open_robot):
    """32 robots at once, three requests each: GR00T clients on the GR00T policy, stock openpi_client robots on
    LIBERO. Triton's statistics show one policy core executing both protocols' requests in batches, and the
    GR00T clients' requests reaching Triton together (the endpoint serves its clients concurrently)."""
    url, port = endpoint
    stats = grpcclient.InferenceServerClient(triton.grpc_url)
    models = ("so100", "libero", "so100_preprocess", "policy_core")
    before = {model: settled_statistics(stats, model) for model in models}
    rounds, robots = 3, 16
    gr00t_clients = [Gr00tClient("127.0.0.1", port, timeout_ms=120_000) for _ in range(robots)]
    openpi_robots = [open_robot(url, "/v1/realtime/robot/openpi/libero") for _ in range(robots)]

    def gr00t_robot(gr00t: Gr00tClient, seed: int) -> list[tuple]:
        actions = [gr00t.get_action(observation(seed), "n1.6", environments=1)[0] for _ in range(rounds)]
        return [("gr00t", action["single_arm"].shape, action["gripper"].shape) for action in actions]

    def openpi_robot(robot: WebsocketClientPolicy, seed: int) -> list[tuple]:
        return [("openpi", robot.infer(libero(np.random.default_rng(seed)))["actions"].shape) for _ in range(rounds)]

    try:
        per_robot = run_threads([lambda c=c, i=i: gr00t_robot(c, i) for i, c in enumerate(gr00t_clients)]
                                + [lambda r=r, i=i: openpi_robot(r, i) for i, r in enumerate(openpi_robots)],
                                timeout_s=300)
    finally:
        for gr00t in gr00t_clients:
            gr00t.close()
    shapes = [shape for shapes in per_robot for shape in shapes]
    assert shapes.count(("gr00t", (1, *ARM), (1, *GRIPPER))) == shapes.count(("openpi", (10, 7))) == rounds * robots

    total = 2 * rounds * robots
    expected = {"so100": rounds * robots, "libero": rounds * robots, "so100_preprocess": rounds * robots,
                "policy_core": total}
    after = {model: settled_statistics(stats, model, before[model].inference_count + expected[model])
             for model in models}
    grew = {model: after[model].inference_count - before[model].inference_count for model in models}
    executions = {model: after[model].execution_count - before[model].execution_count for model in models}
    assert grew == expected, grew
    assert executions["so100_preprocess"] < rounds * robots, "GR00T clients reached Triton one at a time"
    assert executions["policy_core"] < total, "the policy core ran the two protocols' requests one by one"
    _, metrics = http_get(url, "/metrics")
    assert 'endpoint="get_action",outcome="ok",policy="so100",protocol="gr00t"' in metrics


def _batches(stats) -> dict[int, int]:
    return {batch.batch_size: batch.compute_infer.count for batch in stats.batch_stats}


def test_one_policy_core_execution_holds_a_gr00t_and_an_openpi_request(endpoint, triton, open_robot):
    """Cross-protocol batching, shown by Triton's batch statistics: while the core runs a 16-environment GR00T
    request (its whole max_batch_size), one more GR00T environment and one OpenPI robot's frame arrive. A core
    execution of 2 can then only hold one request of each protocol. Whether the two meet in the core's queue
    is up to the machine's scheduling, so a round where they miss each other is run again (at most
    `ROUNDS`); the front must make them meet in one of them."""
    url, port = endpoint
    stats = grpcclient.InferenceServerClient(triton.grpc_url)
    robot = open_robot(url, "/v1/realtime/robot/openpi/libero")
    rounds, new_batches = 0, {}

    def gr00t(environments: int) -> tuple:
        with Gr00tClient("127.0.0.1", port, timeout_ms=120_000) as client:
            return client.get_action(observation(), "n1.6", environments=environments)[0]["gripper"].shape

    def openpi() -> tuple:
        return robot.infer(libero(np.random.default_rng(0)))["actions"].shape

    def preprocessed() -> int:
        return stats.get_inference_statistics("so100_preprocess").model_stats[0].execution_count

    def small_ones_once_big_is_in_the_core(preprocessed_before: int) -> list[tuple]:
        # The small requests leave once the big one has left its preprocess: the core is running it now.
        wait_until(lambda: preprocessed() > preprocessed_before, "the 16-environment request reaches the core",
                   interval_s=0.005)
        return run_threads([lambda: gr00t(1), openpi])

    while rounds < ROUNDS and new_batches.get(2, 0) == 0:
        rounds += 1
        core_before = settled_statistics(stats, "policy_core")
        count = settled_statistics(stats, "so100_preprocess").execution_count
        big, small = run_threads([lambda: gr00t(16), lambda count=count: small_ones_once_big_is_in_the_core(count)],
                                 together=False)
        assert (big, *small) == ((16, *GRIPPER), (1, *GRIPPER), (10, 7))
        core_after = settled_statistics(stats, "policy_core", core_before.inference_count + 18)
        before, after = _batches(core_before), _batches(core_after)
        new_batches = {size: after[size] - before.get(size, 0) for size in after if after[size] != before.get(size, 0)}
        assert sum(size * count for size, count in new_batches.items()) == 18, new_batches
    assert new_batches.get(2) == 1, f"in {rounds} rounds no policy core execution held both protocols: {new_batches}"


def test_serve_flags_and_an_allowed_kill_stop_the_server(triton):
    """`openpi-triton serve --gr00t-port` on an existing Triton (the environment variable works too), and
    `--gr00t-allow-kill`: a GR00T client's kill gets its reply, then the server drains and exits 0."""
    port, ws_port = free_port(), free_port()
    env = {**os.environ, "OPENPI_TRITON_GR00T_PORT": str(port)}
    server = subprocess.Popen(
        [sys.executable, "-m", "openpi_triton", "serve", "--triton-url", triton.grpc_url, "--host", "127.0.0.1",
         "--port", str(ws_port), "--gr00t-allow-kill", "--gr00t-modality-form", "n1.5", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with Gr00tClient("127.0.0.1", port, timeout_ms=60_000) as gr00t:
            assert gr00t.ping()["status"] == "ok"
            assert gr00t.get_modality_config()["state"]["modality_keys"] == ["state.single_arm", "state.gripper"]
            assert gr00t.get_action(observation(), "n1.5")["action.gripper"].shape == (16,)
            assert gr00t.raw(pack_request("kill")) is None
        assert server.wait(30) == 0
        output = server.stdout.read()
        assert f"GR00T clients: tcp://127.0.0.1:{port}" in output, output
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_taken_gr00t_port_is_a_one_line_error(triton):
    with zmq.Context() as context, context.socket(zmq.REP) as taken:
        port = taken.bind_to_random_port("tcp://127.0.0.1")
        result = subprocess.run([sys.executable, "-m", "openpi_triton", "serve", "--triton-url", triton.grpc_url,
                                 "--host", "127.0.0.1", "--port", str(free_port()), "--gr00t-port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--gr00t-port {port} is already in use" in result.stderr


def test_unknown_msgpack_envelope_fields_are_ignored(client):
    """GR00T's envelope has endpoint, data and api_token; a client library adding a field is still served."""
    body = msgpack.packb({"endpoint": "ping", "client": "isaac-lab"})
    assert client.raw(body) == {"status": "ok", "message": "Server is running"}


@pytest.mark.parametrize("generation", ["n1.5", "n1.6"])
def test_bench_drives_gr00t_clients(endpoint, tmp_path, generation):
    parser = argparse.ArgumentParser()
    bench_command.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--protocol", "gr00t", "--gr00t-generation", generation, "--format", "so100",
                              "--host", "127.0.0.1", "--port", str(endpoint[1]), "--robots", "2", "--rate", "20",
                              "--duration", "1", "--warmup", "0.2", "--output", str(tmp_path)])
    args.run(args)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["protocol"] == "gr00t" and results["url"] == f"tcp://127.0.0.1:{endpoint[1]}"
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in results["points"]), results["points"]
