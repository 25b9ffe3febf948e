"""The LeRobot endpoint (`serve --lerobot-port`): LeRobot's async-inference gRPC service for its stock
`RobotClient`, beside the websocket front, in the same process and event loop and on the same backend, so
LeRobot robots' observations reach Triton together with every other robot's and are batched with them.
Unlike LeRobot's PolicyServer (one robot; whatever checkpoint and device it names, loaded; pickles loaded as
they come), each robot here has its own state (keyed by its gRPC peer), instructions select a served policy,
payloads are read by `unpickle` only, and answers wait for nothing but the model. Errors reach the client as
gRPC statuses with a one-paragraph message; the endpoint keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from openpi_triton.config import Settings
from openpi_triton.front.codec import ProtocolError
from openpi_triton.front.drain import Drain
from openpi_triton.front.lerobot import wire
from openpi_triton.front.lerobot.access import is_loopback_host, parse_networks, peer_allowed
from openpi_triton.front.lerobot.features import Binding, FeatureError, bind, select_policy
from openpi_triton.front.lerobot.replies import CLIENT_MAX_MESSAGE_BYTES, ReplyTooLarge, encode_actions, warm_up
from openpi_triton.front.lerobot.robots import Pending, Robot, Robots
from openpi_triton.front.lerobot.unpickle import PayloadError, read_instructions, read_observation
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.observations import nonfinite_answer, observation_to_tensors, unbatch
from openpi_triton.triton.backend import Backend, BackendRejected, BackendUnavailable

log = logging.getLogger("openpi_triton.front")

PROTOCOL = "lerobot"  # the metrics label of this endpoint's requests
ACTIONS_KEY = "actions"
INSTRUCTIONS_MAX_BYTES = 1024 * 1024  # a RemotePolicyConfig is a few kB
# gRPC keepalive pings find robots that vanished, as the websocket's pings do.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 60_000
EXPIRY_CHECK_S = 10.0
Code = grpc.StatusCode


class Refusal(Exception):
    """A call answered with an error status: `code`, the client's message, and the metrics outcome."""

    def __init__(self, code: grpc.StatusCode, text: str, outcome: str) -> None:
        super().__init__(text)
        self.code, self.text, self.outcome = code, text, outcome


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LeRobotServer:
    def __init__(self, settings: Settings, backend: Backend, metrics: FrontMetrics, drain: Drain) -> None:
        if settings.lerobot_port is None:
            raise ValueError("the LeRobot endpoint needs settings.lerobot_port")
        self.settings, self.backend, self.metrics, self.drain = settings, backend, metrics, drain
        self.networks = parse_networks(settings.lerobot_allow)
        if not is_loopback_host(settings.lerobot_host) and not self.networks:
            raise ValueError(f"the LeRobot endpoint would listen on {settings.lerobot_host} for any host: LeRobot's "
                             "client sends no credentials, so a bind beyond loopback needs --lerobot-allow CIDR,...")
        self.address = _address(settings.lerobot_host, settings.lerobot_port)
        self.port = settings.lerobot_port
        self.robots = Robots(settings.max_connections, settings.idle_timeout_s, settings.lerobot_similarity)
        self._requests = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(warm_up)  # torch's import, before the first robot waits for it
        options = [
            ("grpc.max_receive_message_length", self.settings.max_frame_bytes),
            ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.max_connection_idle_ms", int(self.settings.idle_timeout_s * 1000)),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=4 * self.settings.max_connections)
        handlers = {
            "Ready": grpc.unary_unary_rpc_method_handler(
                self._rpc("ready", self._ready), wire.Empty.FromString, wire.Empty.SerializeToString),
            "SendPolicyInstructions": grpc.unary_unary_rpc_method_handler(
                self._rpc("instructions", self._instructions), wire.PolicySetup.FromString,
                wire.Empty.SerializeToString),
            "SendObservations": grpc.stream_unary_rpc_method_handler(
                self._rpc("observation", self._observations), wire.Observation.FromString,
                wire.Empty.SerializeToString),
            "GetActions": grpc.unary_unary_rpc_method_handler(
                self._rpc("get_actions", self._get_actions), wire.Empty.FromString, wire.Actions.SerializeToString),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, handlers),))
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise OSError(f"cannot listen for LeRobot clients on {self.address}: {error}") from None
        if not self.port:
            raise OSError(f"cannot listen for LeRobot clients on {self.address} (port in use?)")
        await server.start()
        self._server = server
        self._expiry = asyncio.create_task(self._expire_loop())
        log.info("LeRobot endpoint listening", extra={"address": _address(self.settings.lerobot_host, self.port)})

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._server is not None:
            await self._server.stop(grace=1.0)
        self._server = self._expiry = None

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_S)
            self.robots.expire()
            self._count_robots()

    def _count_robots(self) -> None:  # one gauge for the endpoint: robots bind to policies after connecting
        self.metrics.connections.labels("", PROTOCOL).set(len(self.robots))

    # --- calls --------------------------------------------------------------------------------------------

    def _rpc(self, endpoint: str, handler: Callable[[Any, Any, str], Awaitable[Any]]) -> Callable[..., Any]:
        """A handler with what every call shares: the access check, error statuses, metrics."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer, policy, outcome = context.peer(), [""], "ok"
            try:
                if not peer_allowed(peer, self.networks):
                    raise Refusal(Code.PERMISSION_DENIED, f"{peer} is not in this server's allowed client networks "
                                  "(--lerobot-allow); reach it through an SSH tunnel or VPN", "forbidden")
                return await handler(request, context, peer, policy)  # type: ignore[call-arg]
            except Refusal as refusal:
                outcome = refusal.outcome
                log.info("LeRobot call refused", extra={"peer": peer, "endpoint": endpoint, "error": refusal.text})
                await context.abort(refusal.code, refusal.text)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                outcome = "cancelled"
                raise
            except Exception as error:  # one call's bug must not stop the endpoint
                outcome = "internal_error"
                log.exception("unexpected error on a LeRobot call", extra={"peer": peer, "endpoint": endpoint})
                await context.abort(Code.INTERNAL, f"internal server error on this call ({type(error).__name__}); "
                                    "the server keeps serving")
            finally:
                self.metrics.requests.labels(policy[0], endpoint, outcome, PROTOCOL).inc()

        return call

    def _robot(self, peer: str) -> Robot:
        robot = self.robots.get(peer)
        if robot is None or robot.binding is None:
            raise Refusal(Code.FAILED_PRECONDITION, "this client has not sent its policy instructions on this "
                          "connection (Ready, then SendPolicyInstructions) or was forgotten after the idle timeout",
                          "no_instructions")
        return robot

    def _refuse_draining(self) -> None:
        if self.drain.draining:
            raise Refusal(Code.UNAVAILABLE, "server shutting down; connect to another replica or retry", "draining")

    async def _ready(self, request: Any, context: Any, peer: str, policy: list[str]) -> Any:
        self._refuse_draining()
        robot = self.robots.admit(peer)
        if robot is None:
            self.metrics.rejected.labels("capacity").inc()
            raise Refusal(Code.RESOURCE_EXHAUSTED, f"server at its limit of {self.settings.max_connections} LeRobot "
                          "clients; try again later", "capacity")
        robot.reset()
        self._count_robots()
        log.info("LeRobot client ready", extra={"peer": peer})
        return wire.Empty()

    async def _instructions(self, request: Any, context: Any, peer: str, policy: list[str]) -> Any:
        self._refuse_draining()
        robot = self.robots.admit(peer)
        if robot is None:
            raise Refusal(Code.RESOURCE_EXHAUSTED, f"server at its limit of {self.settings.max_connections} LeRobot "
                          "clients; try again later", "capacity")
        try:
            instructions = read_instructions(request.data, INSTRUCTIONS_MAX_BYTES)
        except PayloadError as error:
            raise Refusal(Code.INVALID_ARGUMENT, f"policy instructions refused: {error}", "bad_request") from None
        policies = await self.backend.discover()
        try:
            chosen = select_policy(instructions, policies)
        except FeatureError as error:
            raise Refusal(Code.NOT_FOUND, str(error), "unknown_policy") from None
        policy[0] = chosen.name
        if chosen.stateful:
            raise Refusal(Code.FAILED_PRECONDITION, f"policy {chosen.name!r} is stateful; the LeRobot endpoint serves "
                          "stateless policies", "stateful")
        try:
            robot.binding = bind(instructions, chosen)
        except FeatureError as error:
            raise Refusal(Code.INVALID_ARGUMENT, str(error), "bad_features") from None
        robot.reset()  # observations checked against earlier instructions are dropped
        log.info("LeRobot client bound", extra={"peer": peer, "policy": chosen.name,
                                                "actions_per_chunk": instructions.actions_per_chunk,
                                                "device_ignored": instructions.device})
        return wire.Empty()

    async def _reassemble(self, messages: AsyncIterator[Any]) -> bytes:
        """One observation's chunks: BEGIN, MIDDLE..., END (or one END); at most --max-frame-bytes in all."""
        parts: list[bytes] = []
        size, begun, limit = 0, False, self.settings.max_frame_bytes
        async for message in messages:
            state = message.transfer_state
            if state == wire.TRANSFER_BEGIN:
                parts, size, begun = [], 0, True
            elif state == wire.TRANSFER_MIDDLE and not begun:
                raise Refusal(Code.INVALID_ARGUMENT, "observation chunk MIDDLE before BEGIN", "bad_request")
            elif state not in (wire.TRANSFER_MIDDLE, wire.TRANSFER_END):
                raise Refusal(Code.INVALID_ARGUMENT, f"observation chunk with transfer state {state} (UNKNOWN)",
                              "bad_request")
            size += len(message.data)
            if size > limit:
                raise Refusal(Code.RESOURCE_EXHAUSTED, f"an observation over {limit} bytes (--max-frame-bytes)",
                              "too_large")
            parts.append(message.data)
            if state == wire.TRANSFER_END:
                return b"".join(parts)
        raise Refusal(Code.INVALID_ARGUMENT, "the observation stream ended without an END chunk", "bad_request")

    async def _observations(self, messages: Any, context: Any, peer: str, policy: list[str]) -> Any:
        self._refuse_draining()
        robot = self._robot(peer)
        binding = robot.binding
        assert binding is not None
        policy[0] = binding.policy.name
        robot.busy += 1
        try:
            data = await self._reassemble(messages)
        finally:
            robot.busy -= 1
        try:
            observation = read_observation(data, self.settings.max_frame_bytes)
            pending = self._pending(binding, observation.observation, observation.timestep, observation.timestamp)
        except (PayloadError, FeatureError, ProtocolError) as error:
            raise Refusal(Code.INVALID_ARGUMENT, f"observation refused: {error}", "bad_request") from None
        robot.offer(pending, observation.must_go)
        return wire.Empty()

    @staticmethod
    def _pending(binding: Binding, raw: dict[str, Any], timestep: int, timestamp: float) -> Pending:
        tensors = observation_to_tensors(binding.policy, binding.observation(raw), binding.seed(raw))
        return Pending(binding, timestep=timestep, timestamp=timestamp, tensors=tensors, state=binding.state(raw))

    async def _get_actions(self, request: Any, context: Any, peer: str, policy: list[str]) -> Any:
        robot = self.robots.get(peer)
        if robot is None or robot.binding is None:
            await asyncio.sleep(self.settings.lerobot_poll_s)  # the client calls again at once: no busy loop
            self._robot(peer)
        assert robot is not None and robot.binding is not None
        binding = robot.binding
        policy[0] = binding.policy.name
        robot.busy += 1
        try:
            pending = await robot.take(self.settings.lerobot_poll_s)
            if pending is None:
                return wire.Actions()
            self.drain.opened()
            self.metrics.in_flight.inc()
            try:
                payload = await self._answer(pending.binding, pending, f"lerobot-{next(self._requests)}")
            finally:
                self.metrics.in_flight.dec()
                self.drain.closed()
        finally:
            robot.busy -= 1
        self.metrics.latency.labels(binding.policy.name, PROTOCOL).observe(time.monotonic() - pending.received)
        return wire.Actions(data=payload)

    async def _answer(self, binding: Binding, pending: Pending, request_id: str) -> bytes:
        chosen = binding.policy
        try:
            outputs = await self.backend.infer(chosen, pending.tensors, request_id)
        except BackendUnavailable as error:
            raise Refusal(Code.UNAVAILABLE, str(error), "backend_unavailable") from None
        except BackendRejected as error:
            raise Refusal(Code.INTERNAL, f"policy {chosen.name!r} failed on this observation: {error}",
                          "backend_error") from None
        response = unbatch(chosen, outputs)
        problem = nonfinite_answer(chosen, response)
        if problem is not None:
            raise Refusal(Code.INTERNAL, problem, "nonfinite_output")
        actions = response.get(ACTIONS_KEY, next(iter(response.values())))
        try:
            return encode_actions(actions[: binding.actions_per_chunk], pending.timestep, pending.timestamp,
                                  1.0 / self.settings.lerobot_fps)
        except ReplyTooLarge as error:
            raise Refusal(Code.RESOURCE_EXHAUSTED, str(error), "too_large") from None
