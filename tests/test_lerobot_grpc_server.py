"""The LeRobot endpoint over real gRPC, on a policy backend that answers from the observation (no Triton):
handshake, policy selection, feature checks, chunk streams, the per-robot queue, limits and access."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest

from openpi_triton.config import Settings
from openpi_triton.front.drain import Drain
from openpi_triton.front.lerobot import wire
from openpi_triton.front.lerobot.server import LeRobotServer
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.triton.policy import InputSpec, Policy
from tests.lerobot_pickles import RemotePolicyConfig, TimedObservation, dumps_as, features

CHUNK = 50
JOINTS = 6
LEROBOT_BLOCK = {"policy_type": "smolvla", "pretrained_name_or_path": "/models/tiny_smolvla",
                 "input_features": {"observation.state": {"type": "STATE", "shape": [JOINTS]},
                                    "observation.images.front": {"type": "VISUAL", "shape": [3, 32, 32]}},
                 "output_features": {"action": {"type": "ACTION", "shape": [JOINTS]}},
                 "chunk_size": CHUNK, "n_action_steps": CHUNK, "action_names": None}
TINY = Policy(
    name="tiny", metadata={"lerobot": LEROBOT_BLOCK},
    inputs=(InputSpec("observation.state", "observation.state", "FP32", (JOINTS,)),
            InputSpec("observation.images.front", "observation.images.front", "UINT8", (-1, -1, 3)),
            InputSpec("task", "task", "BYTES", (1,))),
    outputs={"actions": "actions"}, seed_input="seed", stateful=False, batched=True, max_batch_size=8,
    models=("tiny",))
OTHER = replace(TINY, name="libero", metadata={})


class EchoBackend:
    """Answers actions[i, j] = state[j] + i (so the mapping and the cut show), recording what it was sent."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self._policies = {"tiny": TINY, "libero": OTHER}
        self.config_errors: dict[str, str] = {}
        self.calls: list[dict[str, np.ndarray]] = []
        self.delay_s, self.in_flight, self.most_in_flight = delay_s, 0, 0

    @property
    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    async def discover(self, force: bool = False) -> dict[str, Policy]:
        return self.policies

    async def policy(self, name: str) -> Policy | None:
        return self._policies.get(name)

    async def infer(self, policy, tensors, request_id, sequence=None):
        self.calls.append(dict(tensors))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        state = tensors["observation.state"][0]
        return {"actions": (state[None, :] + np.arange(CHUNK, dtype=np.float32)[:, None])[None]}

    async def close(self) -> None:
        pass


def settings(**overrides: Any) -> Settings:
    return Settings(**{"lerobot_port": 0, "lerobot_poll_s": 0.3, **overrides})


def serve(scenario: Callable[[LeRobotServer, Callable[[], Client]], Awaitable[None]], backend: Any = None,
          **overrides: Any) -> None:
    async def main() -> None:
        server = LeRobotServer(settings(**overrides), backend or EchoBackend(), FrontMetrics(), Drain())
        await server.start()
        clients: list[Client] = []

        def connect() -> Client:
            clients.append(Client(server.port))
            return clients[-1]

        try:
            await asyncio.wait_for(scenario(server, connect), 60)
        finally:
            for client in clients:
                await client.channel.close()
            await server.stop()

    asyncio.run(main())


class Client:
    """A raw client of transport.AsyncInference: one connection (its own subchannel) per Client."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        base = "/transport.AsyncInference/"
        self.ready_call = self.channel.unary_unary(base + "Ready", wire.Empty.SerializeToString, wire.Empty.FromString)
        self.setup_call = self.channel.unary_unary(base + "SendPolicyInstructions", wire.PolicySetup.SerializeToString,
                                                   wire.Empty.FromString)
        self.observe_call = self.channel.stream_unary(base + "SendObservations", wire.Observation.SerializeToString,
                                                      wire.Empty.FromString)
        self.actions_call = self.channel.unary_unary(base + "GetActions", wire.Empty.SerializeToString,
                                                     wire.Actions.FromString)

    async def start(self, name: str = "tiny", kind: str = "smolvla", chunk: int = 10, **extra: Any) -> None:
        await self.ready_call(wire.Empty(), timeout=10)
        config = RemotePolicyConfig(kind, name, extra.pop("lerobot_features", features()), chunk, "cuda", **extra)
        await self.setup_call(wire.PolicySetup(data=dumps_as(config)), timeout=10)

    async def send(self, timestep: int, state: float = 0.0, must_go: bool = False, chunks: list | None = None,
                   **extra: Any) -> None:
        raw = {f"joint{i}.pos": state + i for i in range(JOINTS)}
        raw.update(front=np.full((48, 64, 3), 5, np.uint8), task="pick")
        raw.update(extra)
        data = dumps_as(TimedObservation(1000.0 + timestep, timestep, raw, must_go))
        if chunks is None:
            chunks = [(wire.TRANSFER_END, data)]
        await self.observe_call(iter_messages(chunks if callable(chunks) is False else chunks(data)), timeout=10)

    async def actions(self) -> list[Any] | None:
        reply = await self.actions_call(wire.Empty(), timeout=10)
        return pickle.loads(reply.data) if reply.data else None  # the test trusts its own server's reply


async def iter_messages(chunks: list[tuple[int, bytes]]) -> AsyncIterator[Any]:
    for state, data in chunks:
        yield wire.Observation(transfer_state=state, data=data)


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


def test_a_robot_gets_timed_float32_tensors_from_its_observation():
    async def scenario(server, connect):
        client = connect()
        await client.start(chunk=10)
        await client.send(timestep=7, state=2.0, must_go=True)
        actions = await client.actions()
        assert [a.timestep for a in actions] == list(range(7, 17))  # cut to actions_per_chunk
        assert actions[0].timestamp == pytest.approx(1007.0) and actions[3].timestamp == pytest.approx(1007.1)
        first = actions[0].action
        assert first.dtype.is_floating_point and str(first.dtype) == "torch.float32" and first.device.type == "cpu"
        assert [round(first[i].item(), 4) for i in range(JOINTS)] == [2.0 + i for i in range(JOINTS)]
        assert actions[4].action[0].item() == pytest.approx(6.0)
        assert type(actions[0]).__module__ == "lerobot.async_inference.helpers" or pytest.importorskip("lerobot")
    serve(scenario)


def test_get_actions_long_polls_and_answers_empty_without_an_observation():
    async def scenario(server, connect):
        client = connect()
        await client.start()
        started = asyncio.get_running_loop().time()
        assert await client.actions() is None
        assert asyncio.get_running_loop().time() - started >= 0.25
    serve(scenario)


def test_filter_similar_states_and_predicted_timesteps_unless_must_go():
    async def scenario(server, connect):
        backend = server.backend
        client = connect()
        await client.start()
        await client.send(timestep=0, state=0.0)  # the first observation always goes
        assert len(await client.actions()) == 10
        await client.send(timestep=1, state=0.5)  # L2 of 6 joints moved by 0.5 = 1.22 >= 1: goes
        assert (await client.actions())[0].timestep == 1
        await client.send(timestep=2, state=0.6)  # L2 0.24 < 1: filtered
        assert await client.actions() is None
        await client.send(timestep=1, state=5.0)  # timestep 1 already predicted: filtered
        assert await client.actions() is None
        await client.send(timestep=1, state=0.5, must_go=True)  # must_go: goes regardless
        assert (await client.actions())[0].timestep == 1
        await client.send(timestep=3, state=9.0)
        await client.send(timestep=4, state=20.0)  # the queue holds one: the newest replaces the older
        assert (await client.actions())[0].timestep == 4
        assert await client.actions() is None
        assert len(backend.calls) == 4
    serve(scenario)


def test_a_client_gets_only_what_the_server_serves():
    async def scenario(server, connect):
        client = connect()
        await client.ready_call(wire.Empty())
        for name, kind in (("lerobot/smolvla_base", "smolvla"), ("tiny", "act"), ("libero", "pi0"),
                           ("/models/tiny_smolvla", "act")):
            config = RemotePolicyConfig(kind, name, features(), 10, "cuda")
            code, details = await status_of(client.setup_call(wire.PolicySetup(data=dumps_as(config))))
            assert code == grpc.StatusCode.NOT_FOUND, (name, details)
            assert "'tiny' (smolvla, from '/models/tiny_smolvla')" in details
        await client.start(name="/models/tiny_smolvla")  # by the path it was served from, with its type
        await client.start(name="tiny")  # by its name
        await client.send(timestep=0)
        assert await client.actions()
    serve(scenario)


def test_wrong_features_are_refused_with_what_is_missing():
    async def scenario(server, connect):
        client = connect()
        wrong = features(cameras={"wrist": (48, 64)})
        code, details = await status_of(client.start(lerobot_features=wrong))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "observation.images.front" in details
        assert "observation.images.wrist" in details
        code, details = await status_of(client.start(lerobot_features=features(joints=5)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape [6]" in details
        # the rename map maps the robot's camera to the policy's
        await client.start(lerobot_features=wrong, rename_map={"observation.images.wrist": "observation.images.front"})
        raw = {f"joint{i}.pos": float(i) for i in range(JOINTS)}
        raw.update(wrist=np.zeros((48, 64, 3), np.uint8), task="t")
        await client.observe_call(iter_messages([(wire.TRANSFER_END, dumps_as(TimedObservation(1.0, 0, raw)))]))
        assert await client.actions()
        code, details = await status_of(client.observe_call(iter_messages([(wire.TRANSFER_END, dumps_as(
            TimedObservation(1.0, 1, {**raw, "wrist": "not an image"}, True)))])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'wrist'" in details
    serve(scenario)


def test_a_bad_observation_is_refused_and_the_robot_goes_on():
    async def scenario(server, connect):
        client = connect()
        await client.start()
        code, details = await status_of(client.send(timestep=0, **{"joint2.pos": "high"}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "joint2.pos" in details
        raw = {f"joint{i}.pos": 0.0 for i in range(JOINTS)}
        raw.update(front=np.zeros((48, 64), np.uint8))
        bad = dumps_as(TimedObservation(1.0, 0, raw))
        code, details = await status_of(client.observe_call(iter_messages([(wire.TRANSFER_END, bad)])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "front" in details
        await client.send(timestep=0)
        assert await client.actions()
    serve(scenario)


def test_chunk_streams_out_of_order_or_unfinished_are_refused():
    async def scenario(server, connect):
        client = connect()
        await client.start()

        def split(data: bytes) -> list[tuple[int, bytes]]:
            half = len(data) // 2
            return [(wire.TRANSFER_BEGIN, data[:half]), (wire.TRANSFER_MIDDLE, data[half:-10]),
                    (wire.TRANSFER_END, data[-10:])]

        await client.send(timestep=0, chunks=split)  # a proper multi-chunk stream
        assert await client.actions()
        for broken, words in ((lambda d: [(wire.TRANSFER_MIDDLE, d[:10]), (wire.TRANSFER_END, d[10:])], "BEGIN"),
                              (lambda d: [(wire.TRANSFER_BEGIN, d[:10]), (wire.TRANSFER_MIDDLE, d[10:])], "END"),
                              (lambda d: [(wire.TRANSFER_UNKNOWN, d)], "UNKNOWN"),
                              (lambda d: [], "END")):
            code, details = await status_of(client.send(timestep=1, must_go=True, chunks=broken))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details
        assert await client.actions() is None  # nothing was queued
        await client.send(timestep=2, must_go=True)
        assert (await client.actions())[0].timestep == 2
    serve(scenario)


def test_an_oversize_stream_is_refused_after_the_limit_and_nothing_more_is_read():
    async def scenario(server, connect):
        client = connect()
        await client.start()
        sent = []

        async def flood() -> AsyncIterator[Any]:
            for _ in range(50):
                sent.append(1)
                yield wire.Observation(transfer_state=wire.TRANSFER_MIDDLE if sent[1:] else wire.TRANSFER_BEGIN,
                                       data=b"\x00" * (256 * 1024))

        code, details = await status_of(client.observe_call(flood()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max-frame-bytes" in details
        code, _ = await status_of(client.observe_call(iter_messages([(wire.TRANSFER_END, b"\x00" * (3 << 20))])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # one message over the limit: refused by gRPC itself
        await client.send(timestep=0)
        assert await client.actions()
    serve(scenario, max_frame_bytes=2 << 20)


def test_a_client_that_disconnects_mid_stream_leaves_nothing_behind():
    async def scenario(server, connect):
        client = connect()
        await client.start()
        gate = asyncio.Event()

        async def stalled() -> AsyncIterator[Any]:
            yield wire.Observation(transfer_state=wire.TRANSFER_BEGIN, data=b"\x80\x04")
            await gate.wait()

        call = client.observe_call(stalled())
        await asyncio.sleep(0.2)
        await client.channel.close()  # the robot vanishes mid-stream
        with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
            await call
        other = connect()
        await other.start()
        await other.send(timestep=0)
        assert await other.actions()
        assert len(server.backend.calls) == 1
    serve(scenario)


def test_robots_have_their_own_state_and_reach_the_backend_together():
    backend = EchoBackend(delay_s=0.3)

    async def scenario(server, connect):
        clients = [connect() for _ in range(4)]
        for i, client in enumerate(clients):
            await client.start()
            await client.send(timestep=10 * i, state=float(i))
        answers = await asyncio.gather(*(client.actions() for client in clients))
        assert [a[0].timestep for a in answers] == [0, 10, 20, 30]
        assert [round(a[0].action[0].item()) for a in answers] == [0, 1, 2, 3]
        assert backend.most_in_flight == 4
        assert len(server.robots) == 4
    serve(scenario, backend=backend)


def test_calls_before_instructions_and_hostile_pickles_get_clear_statuses(tmp_path):
    marker = tmp_path / "pwned"

    class Gadget:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    async def scenario(server, connect):
        client = connect()
        code, details = await status_of(client.send(timestep=0))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "instructions" in details
        await client.ready_call(wire.Empty())
        code, details = await status_of(client.setup_call(wire.PolicySetup(data=pickle.dumps(Gadget()))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "system" in details
        await client.start()
        code, details = await status_of(client.observe_call(iter_messages([(wire.TRANSFER_END,
                                                                            pickle.dumps(Gadget()))])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        await client.send(timestep=0)
        assert await client.actions()
        assert not marker.exists()
    serve(scenario)


def test_the_connection_limit_and_the_allow_list():
    async def scenario(server, connect):
        first, second = connect(), connect()
        await first.start()
        code, details = await status_of(second.ready_call(wire.Empty()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 1" in details
    serve(scenario, max_connections=1)

    with pytest.raises(ValueError, match="lerobot-allow"):
        LeRobotServer(settings(lerobot_host="0.0.0.0"), EchoBackend(), FrontMetrics(), Drain())

    async def refused(server, connect):
        server.networks = ()  # as if bound wide with loopback traffic excluded: check the call path refuses
        from openpi_triton.front.lerobot import server as module
        original = module.peer_allowed
        module.peer_allowed = lambda peer, networks: False
        try:
            code, details = await status_of(connect().ready_call(wire.Empty()))
        finally:
            module.peer_allowed = original
        assert code == grpc.StatusCode.PERMISSION_DENIED and "--lerobot-allow" in details
    serve(refused)
