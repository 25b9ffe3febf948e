"""One robot's websocket after the handshake: the receive -> infer -> answer loop, with the session
bookkeeping (session ids, call counts, Triton sequences of stateful policies)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette import status
from starlette.websockets import WebSocket

from openpi_triton.config import Settings
from openpi_triton.front.codec import ProtocolError, decode_frame, encode
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.observations import observation_to_tensors, unbatch
from openpi_triton.triton.client import Backend, BackendRejected, BackendUnavailable, SequenceFlags
from openpi_triton.triton.policy import Policy

log = logging.getLogger("openpi_triton.front")

CONTROL_KEYS = ("endpoint", "session_id", "seed")
# Triton sequence ids: one per session, unique within this process.
_sequence_ids = itertools.count(secrets.randbits(40) + 1)


@dataclass
class Session:
    """Bookkeeping of one robot session (a connection holds one session at a time)."""

    id: str
    calls: int = 0
    sequence_id: int = 0
    last_tensors: dict[str, np.ndarray] | None = None  # replayed to end a Triton sequence

    @property
    def is_first_call(self) -> bool:
        return self.calls == 0


class RobotConnection:
    """One websocket: handshake done, then the receive -> infer -> answer loop."""

    def __init__(self, websocket: WebSocket, policy: Policy, backend: Backend,
                 settings: Settings, metrics: FrontMetrics) -> None:
        self.websocket, self.policy, self.backend = websocket, policy, backend
        self.settings, self.metrics = settings, metrics
        self.connection_id = uuid.uuid4().hex[:12]
        self.session = self._new_session(None)
        self._requests = itertools.count(1)
        self._prev_total_ms: float | None = None

    def _new_session(self, session_id: str | None) -> Session:
        return Session(id=session_id or uuid.uuid4().hex,
                       sequence_id=next(_sequence_ids) if self.policy.stateful else 0)

    def _log_extra(self, **extra: Any) -> dict[str, Any]:
        return {"policy": self.policy.name, "connection": self.connection_id, "session_id": self.session.id, **extra}

    async def run(self) -> None:
        await self.websocket.send_bytes(encode(self.policy.metadata))
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.websocket.receive(), self.settings.idle_timeout_s)
                except asyncio.TimeoutError:
                    log.info("closing idle connection", extra=self._log_extra())
                    await self.websocket.close(status.WS_1000_NORMAL_CLOSURE, "idle timeout")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                started = time.monotonic()
                frame = message.get("bytes")
                if frame is None:
                    await self._send_error("expected a binary msgpack frame but got a text frame", "text_frame")
                    continue
                if len(frame) > self.settings.max_frame_bytes:
                    await self.websocket.close(status.WS_1009_MESSAGE_TOO_BIG,
                                               f"frame over {self.settings.max_frame_bytes} bytes")
                    return
                await self._handle(frame, started)
        finally:
            await self._end_sequence()

    async def _handle(self, frame: bytes, started: float) -> None:
        request_id = f"{self.connection_id}-{next(self._requests)}"
        endpoint = "infer"
        try:
            message = decode_frame(frame)
            endpoint, session_id, seed = self._control(message)
            if session_id is not None and session_id != self.session.id:
                await self._end_sequence()
                self.session = self._new_session(session_id)
            if endpoint == "reset":
                await self._end_sequence()
                self.session = self._new_session(session_id)
                await self.websocket.send_bytes(encode({"status": "reset successful"}))
                self.metrics.requests.labels(self.policy.name, endpoint, "ok").inc()
                return
            observation = {key: value for key, value in message.items() if key not in CONTROL_KEYS}
            tensors = observation_to_tensors(self.policy, observation, seed)
        except ProtocolError as error:
            await self._send_error(str(error), "bad_request", endpoint, request_id)
            return

        sequence = None
        if self.policy.stateful:
            sequence = SequenceFlags(self.session.sequence_id, start=self.session.is_first_call)
        infer_start = time.monotonic()
        try:
            outputs = await self.backend.infer(self.policy, tensors, request_id, sequence)
        except BackendUnavailable as error:
            await self._send_error(str(error), "backend_unavailable", endpoint, request_id)
            return
        except BackendRejected as error:
            await self._send_error(f"policy {self.policy.name!r} failed on this observation: {error}",
                                   "backend_error", endpoint, request_id)
            return
        infer_ms = (time.monotonic() - infer_start) * 1000
        self.session.calls += 1
        if self.policy.stateful:
            self.session.last_tensors = tensors

        timing: dict[str, float] = {"infer_ms": infer_ms}
        if self._prev_total_ms is not None:
            timing["prev_total_ms"] = self._prev_total_ms
        await self.websocket.send_bytes(encode({**unbatch(self.policy, outputs), "server_timing": timing}))
        total = time.monotonic() - started
        self._prev_total_ms = total * 1000
        self.metrics.requests.labels(self.policy.name, endpoint, "ok").inc()
        self.metrics.latency.labels(self.policy.name).observe(total)
        log.debug("inference", extra=self._log_extra(request_id=request_id, infer_ms=round(infer_ms, 3)))

    @staticmethod
    def _control(message: dict[str, Any]) -> tuple[str, str | None, int | None]:
        endpoint = message.get("endpoint", "infer")
        if endpoint not in ("infer", "reset"):
            raise ProtocolError(f"unknown endpoint {str(endpoint)[:40]!r}; use 'infer' or 'reset'")
        session_id = message.get("session_id")
        if session_id is not None and not isinstance(session_id, (str, int)):
            raise ProtocolError(f"session_id must be a string or an integer, got {type(session_id).__name__}")
        seed = message.get("seed")
        if seed is not None:
            if isinstance(seed, np.integer):
                seed = int(seed)
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
                raise ProtocolError(f"seed must be an integer in [0, 2^63), got {str(seed)[:40]}")
        return endpoint, None if session_id is None else str(session_id), seed

    async def _send_error(self, text: str, outcome: str, endpoint: str = "infer", request_id: str = "") -> None:
        self.metrics.requests.labels(self.policy.name, endpoint, outcome).inc()
        log.warning("request failed", extra=self._log_extra(request_id=request_id, outcome=outcome, error=text))
        await self.websocket.send_text(text)

    async def _end_sequence(self) -> None:
        """End the session's Triton sequence (reset, new session id, disconnect), if one was started."""
        session = self.session
        if not self.policy.stateful or session.last_tensors is None:
            return
        tensors, session.last_tensors = session.last_tensors, None
        request_id = f"{self.connection_id}-end-{session.sequence_id}"
        # Triton ends a sequence only with a request: replay the last observation, drop the result.
        with contextlib.suppress(BackendUnavailable, BackendRejected):
            await self.backend.infer(self.policy, tensors, request_id, SequenceFlags(session.sequence_id, end=True))
