"""The websocket front end to end: a real tritonserver, uvicorn, and the real openpi_client."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from openpi_client import msgpack_numpy
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from openpi_triton.example_observations import libero

from .conftest import RECV_TIMEOUT_S, front_settings, http_get, running_front, settled_statistics
from .waiting import run_threads, wait_until

pytestmark = pytest.mark.integration


def ask(ws, message: dict | bytes) -> object:
    ws.send(message if isinstance(message, bytes) else msgpack_numpy.packb(message))
    reply = ws.recv(timeout=RECV_TIMEOUT_S)
    return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)


@pytest.mark.parametrize("path", ["", "/v1/realtime/robot/openpi", "/v1/realtime/robot/openpi/libero"])
def test_stock_openpi_client_gets_actions(front, path, open_robot):
    policy = open_robot(front, path)
    assert policy.get_server_metadata() == {}
    first = policy.infer(libero(np.random.default_rng(0)))
    second = policy.infer(libero(np.random.default_rng(1)))
    assert first["actions"].shape == (10, 7) and first["actions"].dtype == np.float32
    assert set(first["server_timing"]) == {"infer_ms"}
    assert first["server_timing"]["infer_ms"] > 0
    assert second["server_timing"]["prev_total_ms"] >= first["server_timing"]["infer_ms"]


def test_camera_frames_reach_triton_through_shared_memory(front, triton, open_robot):
    observation = {**libero(np.random.default_rng(0)), "seed": 5}
    through_shared_memory = open_robot(front).infer(observation)["actions"]
    status = grpcclient.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(as_json=True)
    assert any(name.startswith("openpi_triton_") for name in status.get("regions", {})), status
    with running_front(front_settings(triton, triton_shared_memory=False)) as inline_front:
        inline = open_robot(inline_front).infer(observation)["actions"]
    np.testing.assert_array_equal(through_shared_memory, inline)


def test_shared_memory_regions_of_unanswered_requests_are_not_reused(triton):
    import asyncio

    import tritonclient.grpc.aio as aioclient

    from openpi_triton.triton.shared_memory import SharedMemoryPool

    async def scenario() -> None:
        client = aioclient.InferenceServerClient(triton.grpc_url)
        pool = SharedMemoryPool(client, budget_bytes=2 << 20)
        try:
            timed_out = await pool.acquire(300_000)
            pool.retire(timed_out)  # Triton may still read it: the next request must get another region
            answered = await pool.acquire(300_000)
            assert answered is not timed_out
            pool.release(answered)
            assert await pool.acquire(300_000) is answered  # answered regions are reused
            pool.release(answered)
            assert await pool.acquire(3 << 20) is None  # past the budget: the request goes inline
            # After a restart Triton holds no old request and no registration: retired regions return.
            generation = pool.generation
            await client.unregister_system_shared_memory()
            pool.forget_registrations(generation)
            reused = {id(await pool.acquire(300_000)), id(await pool.acquire(300_000))}
            assert reused == {id(timed_out), id(answered)}
            assert timed_out.registered and answered.registered
            # Another request that failed on the same restart must not forget the new registrations:
            # registering a region twice fails ("already in manager").
            pool.forget_registrations(generation)
            assert timed_out.registered and answered.registered
            # A request that failed on that restart but forgets later, after a region was registered with
            # the new Triton: registering it again must not fail.
            pool.release(timed_out)
            pool.forget_registrations()
            assert await pool.acquire(300_000) is timed_out and timed_out.registered
        finally:
            await pool.close()
            await client.close()

    asyncio.run(scenario())


def test_seed_makes_sampling_deterministic(front, open_ws):
    ws = open_ws(front)
    obs = libero(np.random.default_rng(0))
    a = ask(ws, {**obs, "seed": 7})["actions"]
    b = ask(ws, {**obs, "seed": 7})["actions"]
    c = ask(ws, {**obs, "seed": 8})["actions"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_reset_answers_as_openpi_does(front, open_ws):
    ws = open_ws(front)
    assert ask(ws, {"endpoint": "reset"}) == {"status": "reset successful"}


def _libero_with(**changes) -> dict:
    obs = libero(np.random.default_rng(0))
    obs.update(changes)
    return {key: value for key, value in obs.items() if value is not None}


def test_openpi_client_sees_errors_as_runtime_errors(front, open_robot):
    policy = open_robot(front)
    with pytest.raises(RuntimeError, match="observation/state"):
        policy.infer(_libero_with(**{"observation/state": np.zeros(9)}))
    assert policy.infer(libero(np.random.default_rng(0)))["actions"].shape == (10, 7)


def test_a_bad_robot_does_not_disturb_a_good_one(front, open_ws):
    good, bad = open_ws(front), open_ws(front)
    for _ in range(3):
        bad.send(b"\xc1 garbage")
        assert isinstance(bad.recv(timeout=RECV_TIMEOUT_S), str)
        assert ask(good, libero(np.random.default_rng(0)))["actions"].shape == (10, 7)


def test_unknown_policy_is_refused_at_the_handshake(front):
    with pytest.raises(InvalidStatus) as refused:
        connect(front + "/v1/realtime/robot/openpi/no_such_robot", open_timeout=RECV_TIMEOUT_S)
    assert refused.value.response.status_code == 404
    assert b"unknown policy 'no_such_robot'" in refused.value.response.body


def test_health_readiness_metrics_and_policy_list(front, open_robot):
    assert http_get(front, "/healthz") == (200, "OK\n")
    assert http_get(front, "/readyz")[0] == 200
    open_robot(front).infer(libero(np.random.default_rng(0)))
    status, metrics = http_get(front, "/metrics")
    ok = 'openpi_triton_requests_total{endpoint="infer",outcome="ok",policy="libero",protocol="openpi"}'
    assert status == 200 and ok in metrics
    status, body = http_get(front, "/v1/policies")
    policies = {p["name"]: p for p in json.loads(body)["policies"]}
    assert policies["libero"]["metadata"] == {} and "observation/state" in policies["libero"]["observation"]
    assert policies["session_counter"]["stateful"] is True


def test_sixteen_robots_overlap(front, triton, open_ws):
    """Each execution of the slow policy takes 0.5 s: a front that served robots one after another would
    hand Triton one request at a time, and Triton would run them as 16 executions."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    before = settled_statistics(client, "slow_policy")
    ws_list = [open_ws(front, "/v1/realtime/robot/openpi/slow_policy") for _ in range(16)]
    replies = run_threads([lambda ws=ws: ask(ws, {"delay": np.array([0.5], np.float32)}) for ws in ws_list])
    assert len(replies) == 16 and all(isinstance(r, dict) for r in replies)
    after = settled_statistics(client, "slow_policy", before.inference_count + 16)
    assert after.inference_count - before.inference_count == 16
    executions = after.execution_count - before.execution_count
    assert executions < 16, "the front handed Triton one robot's request at a time"


# --- stateful policies: a session is a Triton sequence --------------------------------------------

COUNTER = "/v1/realtime/robot/openpi/session_counter"


def count(ws, **control) -> tuple[int, int]:
    reply = ask(ws, {"inputs": {"x": np.zeros(1, np.float32)}, **control})
    return int(reply["step"][0]), int(reply["live_sequences"][0])


def test_concurrent_connections_keep_separate_state(front, open_ws):
    a, b = open_ws(front, COUNTER), open_ws(front, COUNTER)
    assert [count(a)[0] for _ in range(3)] == [1, 2, 3]
    assert [count(b)[0] for _ in range(2)] == [1, 2]
    assert count(a)[0] == 4


def test_reset_restarts_the_count(front, open_ws):
    ws = open_ws(front, COUNTER)
    _, live = count(ws)
    count(ws)
    assert ask(ws, {"endpoint": "reset"}) == {"status": "reset successful"}
    # A fresh sequence, and the old one ended in Triton (not left live beside it).
    assert count(ws) == (1, live)


def test_a_new_session_id_restarts_the_count(front, open_ws):
    ws = open_ws(front, COUNTER)
    assert [count(ws, session_id="episode-1")[0] for _ in range(3)] == [1, 2, 3]
    _, live = count(ws, session_id="episode-1")
    assert count(ws, session_id="episode-2") == (1, live)
    assert count(ws, session_id="episode-2")[0] == 2


def test_every_inference_has_its_own_triton_request_id(front, open_ws):
    a, b = open_ws(front, COUNTER), open_ws(front, COUNTER)
    # The counter model echoes the id as a text output, which reaches the robot as a string.
    ids = [ask(ws, {"inputs": {"x": np.zeros(1, np.float32)}})["request_id"] for ws in (a, a, b)]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == 3, ids


def test_disconnect_ends_the_sequence_in_triton(front, open_ws):
    observer = open_ws(front, COUNTER)
    _, live_before = count(observer)
    leaving = open_ws(front, COUNTER)
    count(leaving), count(leaving)
    assert count(observer)[1] == live_before + 1
    leaving.close()
    wait_until(lambda: count(observer)[1] == live_before, "the departed robot's sequence is no longer live in Triton")


# --- auth and limits (each on its own front) ----------------------------------------------------------


def test_api_keys(triton, open_robot):
    with running_front(front_settings(triton, api_keys=("s3cret", "other"))) as url:
        assert open_robot(url, api_key="s3cret").infer(libero(np.random.default_rng(0)))["actions"].shape == (10, 7)
        with connect(url, additional_headers={"Authorization": "Bearer other"}) as bearer:
            assert msgpack_numpy.unpackb(bearer.recv(timeout=RECV_TIMEOUT_S)) == {}
        for headers in ({}, {"Authorization": "Api-Key wrong"}, {"Authorization": "Basic s3cret"}):
            with pytest.raises(InvalidStatus) as refused:
                connect(url, additional_headers=headers, open_timeout=RECV_TIMEOUT_S)
            assert refused.value.response.status_code == 401
        assert http_get(url, "/healthz") == (200, "OK\n")


def test_frame_over_the_limit_closes_with_1009(triton, open_ws):
    with running_front(front_settings(triton, max_frame_bytes=64 * 1024)) as url:
        ws = open_ws(url)
        ws.send(msgpack_numpy.packb(libero(np.random.default_rng(0))))  # ~300 kB
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=RECV_TIMEOUT_S)
        assert closed.value.rcvd.code == 1009


def test_default_frame_limit_fits_four_raw_cameras(front, open_ws):
    ws = open_ws(front)
    frames = {f"cam{i}": np.zeros((480, 640, 3), np.uint8) for i in range(4)}
    reply = ask(ws, {**libero(np.random.default_rng(0)), "extra_cameras": frames})
    assert reply["actions"].shape == (10, 7)


def test_connection_limit_refuses_with_1013(triton, open_ws):
    with running_front(front_settings(triton, max_connections=2)) as url:
        first, second = open_ws(url), open_ws(url)
        third = open_ws(url, handshake=False)
        with pytest.raises(ConnectionClosed) as closed:
            third.recv(timeout=RECV_TIMEOUT_S)
            third.recv(timeout=RECV_TIMEOUT_S)
        assert closed.value.rcvd.code == 1013
        assert ask(first, libero(np.random.default_rng(0)))["actions"].shape == (10, 7)
        second.close()


def test_idle_connections_are_closed_with_1000(triton, open_ws):
    with running_front(front_settings(triton, idle_timeout_s=0.5)) as url:
        ws = open_ws(url)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=RECV_TIMEOUT_S)
        assert closed.value.rcvd.code == 1000


# --- Triton outages and logs ----------------------------------------------------------------------


def test_triton_outage_is_reported_and_recovered_from_without_a_restart(tmp_path, open_ws):
    from openpi_triton.process import free_port
    from openpi_triton.triton.embedded import EmbeddedTriton

    from .conftest import TEST_MODEL_REPOSITORY

    backend = EmbeddedTriton([TEST_MODEL_REPOSITORY], http_port=free_port(), grpc_port=free_port(),
                             metrics_port=free_port())
    backend.start()
    try:
        settings = front_settings(backend, triton_timeout_s=3.0, default_policy="slow_policy")
        with running_front(settings) as url:
            ws = open_ws(url)
            # Large enough to travel through shared memory, whose registrations a restart wipes out.
            payload = np.random.default_rng(0).integers(0, 256, 128 * 1024, dtype=np.uint8)
            request = {"delay": np.array([0.0], np.float32), "payload": payload}
            assert int(ask(ws, request)["payload_sum"][0]) == int(payload.sum())

            backend.stop()
            ws.send(msgpack_numpy.packb(request))
            reply = ws.recv(timeout=RECV_TIMEOUT_S)
            assert isinstance(reply, str) and reply.startswith("policy backend unavailable")
            # /readyz answers from state refreshed every second
            wait_until(lambda: (lambda status, reason: status == 503 and "Triton" in reason)(*http_get(url, "/readyz")),
                       "/readyz says Triton is down", 30)

            backend.start()
            replies = []
            wait_until(lambda: isinstance(replies.append(ask(ws, request)) or replies[-1], dict),
                       "the front recovers without a restart", interval_s=0.5)
            reply = replies[-1]
            assert int(reply["payload_sum"][0]) == int(payload.sum())
            wait_until(lambda: http_get(url, "/readyz")[0] == 200, "/readyz is ready again", 30)

            # A restart between two requests: the front's shared-memory regions are unknown to the new
            # Triton, and the very next request still gets its answer.
            backend.stop()
            backend.start()
            reply = ask(ws, request)
            assert isinstance(reply, dict), f"the first request after a restart failed: {reply}"
            assert int(reply["payload_sum"][0]) == int(payload.sum())
    finally:
        backend.stop()


def test_logs_carry_ids_and_never_observation_contents(front, caplog, open_ws):
    secret = "the-robot-is-in-the-kitchen"
    with caplog.at_level("DEBUG", logger="openpi_triton"):
        ws = open_ws(front)
        ask(ws, {**_libero_with(**{"observation/state": np.zeros(9)}), "prompt": secret, "session_id": "s-42"})
        ask(ws, {**libero(np.random.default_rng(0)), "prompt": secret, "session_id": "s-42"})
    records = [r for r in caplog.records if r.name.startswith("openpi_triton")]
    # The bad request is logged before its error frame is sent, with the session and its own request id.
    failed = [r for r in records if getattr(r, "outcome", None) == "bad_request"]
    assert failed and all(r.session_id == "s-42" and r.request_id for r in failed)
    for record in records:
        assert secret not in record.getMessage() and secret not in json.dumps(vars(record), default=str)


def test_a_drain_is_bounded_by_the_drain_timeout(triton, open_ws):
    """An inference slower than --drain-timeout does not hold the shutdown: its robot gets 1012."""
    settings = front_settings(triton, default_policy="slow_policy", drain_timeout_s=0.5)
    with running_front(settings) as url:
        ws = open_ws(url)
        # 20 times the drain timeout: however slowly this machine runs, the drain ends first.
        ws.send(msgpack_numpy.packb({"delay": np.array([10.0], np.float32)}))
        wait_until(lambda: "openpi_triton_in_flight_requests 1.0" in http_get(url, "/metrics")[1],
                   "the frame is in flight")
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=RECV_TIMEOUT_S)
    assert closed.value.rcvd.code == 1012


def test_rtc_keys_are_refused_by_a_policy_without_rtc(front, open_robot):
    """The reference core cannot do real-time chunking: an RTC frame gets a text error, the connection stays."""
    policy = open_robot(front)
    with pytest.raises(RuntimeError, match="does not support real-time chunking"):
        policy.infer(_libero_with(**{"rtc/leftover": np.zeros((5, 7), np.float32), "rtc/delay": 2}))
    assert policy.infer(libero(np.random.default_rng(0)))["actions"].shape == (10, 7)
