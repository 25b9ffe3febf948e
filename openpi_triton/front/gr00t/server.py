"""The GR00T endpoint (`serve --gr00t-port`): Isaac GR00T's policy protocol over ZeroMQ, beside the websocket
front, in the same process and event loop and on the same backend, so GR00T clients' requests reach Triton
together with the websocket robots' and are batched with them.

One ROUTER socket serves every client (GR00T's REQ sockets) at once: each request is handled in its own
task and answered to its sender when done, whatever the others are doing, where GR00T's own REP server
answers one client at a time. Every request gets exactly one single-frame reply, an error as
`{"error": text}`, and the socket keeps serving. The websocket front's limits apply: a message over
--max-frame-bytes makes libzmq drop that client's connection before reading it (as the websocket closes
with 1009); at most --max-connections clients, a client counting from its first request until it
disconnects or stays silent for --idle-timeout; dead clients are found by ZMTP heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from openpi_triton.config import Settings
from openpi_triton.front.auth import key_matches
from openpi_triton.front.codec import ProtocolError, Refused
from openpi_triton.front.drain import Drain
from openpi_triton.front.gr00t.codec import decode_request, decode_value, encode_reply, modality_config_reply
from openpi_triton.front.gr00t.requests import action_reply, parse_get_action
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.observations import nonfinite_answer, observation_to_tensors, rows_response
from openpi_triton.triton.backend import Backend, BackendRejected, BackendUnavailable
from openpi_triton.triton.policy import Policy

log = logging.getLogger("openpi_triton.front")

PROTOCOL = "gr00t"  # the metrics label of this endpoint's requests
ENDPOINTS = ("ping", "kill", "get_action", "get_modality_config", "reset")
# ZMTP heartbeats find clients that vanished without closing, as the websocket's pings do.
HEARTBEAT_INTERVAL_MS = 20_000
HEARTBEAT_TIMEOUT_MS = 60_000
EXPIRY_CHECK_S = 10.0


def _default_kill() -> None:
    """What an allowed `kill` does: the same as SIGTERM (drain, then stop the server and its tritonserver)."""
    signal.raise_signal(signal.SIGTERM)


@dataclass
class _Client:
    last_seen: float
    fd: int | None  # its TCP connection's descriptor, to notice its disconnect
    busy: bool = False


@dataclass
class _Call:
    endpoint: str = "unknown"  # a metrics label: only known endpoint names


def _source_fd(frame: zmq.Frame) -> int | None:
    with contextlib.suppress(zmq.ZMQError, AttributeError, TypeError):
        return int(frame.get(zmq.SRCFD))
    return None


def _address(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class Gr00tServer:
    def __init__(self, settings: Settings, backend: Backend, metrics: FrontMetrics, drain: Drain,
                 on_kill: Callable[[], None] = _default_kill) -> None:
        if settings.gr00t_port is None:
            raise ValueError("the GR00T endpoint needs settings.gr00t_port")
        self.settings, self.backend, self.metrics, self.drain = settings, backend, metrics, drain
        self.on_kill = on_kill
        self.address = _address(settings.host, settings.gr00t_port)
        self._clients: dict[bytes, _Client] = {}
        self._requests = itertools.count(1)
        self._handlers: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None

    async def start(self) -> None:
        self._context = zmq.asyncio.Context()
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a client that left raises instead of vanishing
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_frame_bytes)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_INTERVAL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
        if ":" in self.settings.host:
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.bind(self.address)
        except zmq.ZMQError as error:
            sock.close()
            self._context.term()
            raise OSError(f"cannot listen for GR00T clients on {self.address}: {error}") from None
        self._socket = sock
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._loops = [asyncio.create_task(self._receive()), asyncio.create_task(self._watch())]
        log.info("GR00T endpoint listening", extra={"address": self.address, "policy": self.settings.gr00t_policy})

    async def stop(self) -> None:
        """Stop receiving; requests still in flight (the drain waited for them) get a moment, then the socket closes."""
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=1.0)
        for task in self._handlers:
            task.cancel()
        if self._socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._socket.disable_monitor()
            self._socket.close(linger=0)
        if self._monitor is not None:
            self._monitor.close(linger=0)
        if self._context is not None:
            self._context.term()
        self._socket = self._monitor = self._context = None

    # --- clients ------------------------------------------------------------------------------------

    def _count_clients(self) -> None:
        self.metrics.connections.labels(self.settings.gr00t_policy, PROTOCOL).set(len(self._clients))

    def _expire(self, now: float) -> None:
        idle = [identity for identity, client in self._clients.items()
                if not client.busy and now - client.last_seen > self.settings.idle_timeout_s]
        for identity in idle:
            del self._clients[identity]
        if idle:
            log.info("forgot idle GR00T clients", extra={"clients": len(idle)})
            self._count_clients()

    def _admit(self, identity: bytes, fd: int | None) -> str | None:
        """Count the client in (its first request) and mark it busy; or why its request is refused."""
        now = time.monotonic()
        client = self._clients.get(identity)
        if client is None:
            self._expire(now)
            if len(self._clients) >= self.settings.max_connections:
                self.metrics.rejected.labels("capacity").inc()
                return (f"server at its limit of {self.settings.max_connections} GR00T clients; try again later "
                        "(a client counts until it disconnects or stays silent for the idle timeout)")
            client = self._clients[identity] = _Client(now, fd)
            self._count_clients()
        if client.busy:
            return "this client already has a request being answered; send one request at a time (REQ/REP)"
        client.last_seen, client.fd, client.busy = now, fd, True
        return None

    def _release(self, identity: bytes) -> None:
        client = self._clients.get(identity)
        if client is not None:
            client.busy = False
            client.last_seen = time.monotonic()

    def _disconnected(self, fd: int) -> None:
        gone = [identity for identity, client in self._clients.items() if client.fd == fd and not client.busy]
        for identity in gone:
            del self._clients[identity]
        if gone:
            self._count_clients()

    async def _watch(self) -> None:
        """Forget clients whose connection closed (monitor events) or that went idle."""
        assert self._monitor is not None
        while True:
            try:
                if await self._monitor.poll(EXPIRY_CHECK_S * 1000):
                    event = parse_monitor_message(await self._monitor.recv_multipart())
                    if event["event"] == zmq.EVENT_DISCONNECTED:
                        self._disconnected(int(event["value"]))
                self._expire(time.monotonic())
            except (zmq.ZMQError, ValueError, KeyError):  # an unreadable event: the idle timeout still applies
                log.exception("unreadable GR00T socket event")

    # --- requests -----------------------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            try:
                await self._accept(frames)
            except Exception:  # a bug on one message must not stop the endpoint
                log.exception("unexpected error on a GR00T message")

    async def _accept(self, frames: list[zmq.Frame]) -> None:
        """Start answering one message, or refuse it at once."""
        # REQ clients: [identity, b"", body]; a DEALER may leave out the empty delimiter.
        delimited = len(frames) > 1 and len(frames[1]) == 0
        envelope = [frame.bytes for frame in frames[: 2 if delimited else 1]]
        body = frames[len(envelope):]
        identity = envelope[0]
        if len(body) != 1:
            await self._send(envelope, encode_reply({"error": f"expected a request of one frame, got {len(body)}"}))
            return
        refusal = self._admit(identity, _source_fd(body[0]))
        if refusal is not None:
            await self._send(envelope, encode_reply({"error": refusal}))
            return
        task = asyncio.create_task(self._handle(identity, envelope, body[0].buffer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _send(self, envelope: list[bytes], payload: bytes) -> None:
        assert self._socket is not None
        try:
            await self._socket.send_multipart([*envelope, payload])
        except zmq.ZMQError as error:  # the client left (EHOSTUNREACH): nobody to answer
            log.info("GR00T client gone before its reply", extra={"error": str(error)})

    async def _handle(self, identity: bytes, envelope: list[bytes], body: memoryview) -> None:
        started = time.monotonic()
        request_id = f"gr00t-{identity.hex()[:10]}-{next(self._requests)}"
        call, outcome = _Call(), "ok"
        self.drain.opened()
        self.metrics.in_flight.inc()
        try:
            try:
                reply = await self._answer(body, call, request_id)
            except Refused as refused:
                reply, outcome = {"error": refused.text}, refused.outcome
            except Exception as error:  # whatever goes wrong on one request must not stop the socket
                log.exception("unexpected error on a GR00T request", extra={"request_id": request_id})
                reply, outcome = {"error": f"internal server error on this request ({type(error).__name__}); the "
                                           "server keeps serving"}, "internal_error"
            try:
                payload = encode_reply(reply)
            except (TypeError, ValueError, OverflowError) as error:
                payload, outcome = encode_reply({"error": f"the reply could not be encoded: {error}"}), "internal_error"
            await self._send(envelope, payload)
        finally:
            self.metrics.in_flight.dec()
            self._release(identity)
            self.drain.closed()
        policy = self.settings.gr00t_policy
        self.metrics.requests.labels(policy, call.endpoint, outcome, PROTOCOL).inc()
        if outcome != "ok":
            log.warning("GR00T request failed", extra={"request_id": request_id, "endpoint": call.endpoint,
                                                      "outcome": outcome, "error": reply["error"]})
        elif call.endpoint == "get_action":
            self.metrics.latency.labels(policy, PROTOCOL).observe(time.monotonic() - started)
        elif call.endpoint == "kill":
            log.warning("GR00T client asked the server to stop (kill); shutting down", extra={"request_id": request_id})
            asyncio.get_running_loop().call_soon(self.on_kill)

    async def _answer(self, body: memoryview, call: _Call, request_id: str) -> Any:
        """The reply to one request; raises Refused with the error text the client gets instead."""
        if self.drain.draining:
            raise Refused("server shutting down; connect to another replica or retry", "draining")
        try:
            message = decode_request(body)
        except ProtocolError as error:
            raise Refused(str(error), "bad_request") from None
        if self.settings.auth_enabled and not key_matches(message.get("api_token"), self.settings.api_keys):
            raise Refused("Unauthorized: Invalid API token", "unauthorized")
        endpoint = message.get("endpoint", "get_action")
        if endpoint not in ENDPOINTS:
            shown = repr(endpoint[:40]) if isinstance(endpoint, str) else type(endpoint).__name__
            raise Refused(f"Unknown endpoint: {shown} (this server answers {', '.join(ENDPOINTS)})", "unknown_endpoint")
        call.endpoint = endpoint
        data = message.get("data")
        if endpoint == "ping":
            return {"status": "ok", "message": "Server is running"}
        if endpoint == "kill":
            if not self.settings.gr00t_allow_kill:
                raise Refused("kill is refused: this server was started without --gr00t-allow-kill (it also serves "
                              "other robots); stop it with SIGTERM or Ctrl-C", "kill_refused")
            return None
        if endpoint == "reset":
            if not isinstance(data, (dict, type(None))) or set(data or {}) - {"options"}:
                raise Refused("reset takes {'options': map or nil}", "bad_request")
            return {}
        policy = await self._policy()
        assert policy.modality is not None
        if endpoint == "get_modality_config":
            return modality_config_reply(policy.modality, self.settings.gr00t_modality_form)
        try:
            request = parse_get_action(decode_value(data), policy.modality)
            tensors = observation_to_tensors(policy, request.observation, None, request.rows)
        except ProtocolError as error:
            raise Refused(str(error), "bad_request") from None
        outputs = await self._infer(policy, tensors, request_id)
        response = rows_response(policy, outputs)
        problem = nonfinite_answer(policy, response)
        if problem is not None:
            raise Refused(problem, "nonfinite_output")
        return action_reply(request, response, policy.modality)

    async def _policy(self) -> Policy:
        name = self.settings.gr00t_policy
        policy = await self.backend.policy(name)
        if policy is None:
            reason = self.backend.config_errors.get(name)
            known = ", ".join(sorted(self.backend.policies)) or "none (is Triton up?)"
            raise Refused(f"policy {name!r} is not available ({reason or 'not served by Triton'}); policies: {known}. "
                          "The server's --gr00t-policy chooses the policy GR00T clients get", "unknown_policy")
        if policy.modality is None:
            raise Refused(f"policy {name!r} has no 'gr00t_modality_config' parameter, so GR00T clients cannot be told "
                          "what to send; see the README's section for GR00T users", "not_gr00t")
        if policy.stateful:
            raise Refused(f"policy {name!r} is stateful; the GR00T endpoint serves stateless policies", "stateful")
        return policy

    async def _infer(self, policy: Policy, tensors: dict[str, np.ndarray], request_id: str) -> dict[str, np.ndarray]:
        """One Triton call for the request's rows, or several of at most the policy's batch size, concurrently."""
        rows = len(next(iter(tensors.values())))
        size = policy.max_batch_size or rows
        chunks = [{name: value[start:start + size] for name, value in tensors.items()}
                  for start in range(0, rows, size)]
        try:
            results = await asyncio.gather(*(self.backend.infer(policy, chunk, f"{request_id}-{i}")
                                             for i, chunk in enumerate(chunks)))
        except BackendUnavailable as error:
            raise Refused(str(error), "backend_unavailable") from None
        except BackendRejected as error:
            raise Refused(f"policy {policy.name!r} failed on this observation: {error}", "backend_error") from None
        if len(results) == 1:
            return results[0]
        return {name: np.concatenate([result[name] for result in results]) for name in results[0]}
