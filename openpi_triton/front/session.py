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
from openpi_triton.front.codec import ProtocolError, Refused, decode_frame, encode
from openpi_triton.front.conventions import ClientEncoding, infer_answer, reset_answer
from openpi_triton.front.drain import Drain
from openpi_triton.front.live_sessions import LiveSessions, SessionLimitReached
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.observations import nonfinite_answer, observation_to_tensors, unbatch
from openpi_triton.front.rtc import RTC_KEYS, answered_chunk, rtc_request, rtc_tensors
from openpi_triton.triton.backend import Backend, BackendRejected, BackendUnavailable, SequenceFlags, SequenceLost
from openpi_triton.triton.policy import Policy

log = logging.getLogger("openpi_triton.front")

CONTROL_KEYS = ("endpoint", "session_id", "seed", *RTC_KEYS)
PROTOCOL = "openpi"  # the metrics label of this front's requests
MAX_SESSION_ID_CHARS = 256
# Triton sequence ids: one per session, unique within this process.
_sequence_ids = itertools.count(secrets.randbits(40) + 1)


@dataclass
class Session:
    """Bookkeeping of one robot session (a connection holds one session at a time)."""

    id: str
    calls: int = 0
    sequence_id: int = 0
    last_tensors: dict[str, np.ndarray] | None = None  # replayed to end a Triton sequence
    live: bool = False  # counted in the server's live sessions (a stateful policy's session once started)
    last_chunk: np.ndarray | None = None  # the last answered chunk, for remembered-mode RTC (`front.rtc`)

    @property
    def is_first_call(self) -> bool:
        return self.calls == 0


def _preview(value: Any) -> str:
    """A short description of a control value for an error text (never a long or binary one)."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return repr(value if not isinstance(value, str) else str(value)[:40])
    return type(value).__name__


class RobotConnection:
    """One websocket: handshake done, then the receive -> infer -> answer loop. Every frame gets exactly
    one answer or one error text; nothing a robot sends closes the connection but a frame over the size
    limit."""

    def __init__(self, websocket: WebSocket, policy: Policy, backend: Backend,
                 settings: Settings, metrics: FrontMetrics, drain: Drain | None = None,
                 live_sessions: LiveSessions | None = None) -> None:
        self.websocket, self.policy, self.backend = websocket, policy, backend
        self.settings, self.metrics = settings, metrics
        self.drain = drain if drain is not None else Drain()
        self.live_sessions = live_sessions if live_sessions is not None else LiveSessions(settings.max_live_sessions)
        self.encoding = ClientEncoding(self._log_extra)
        self.connection_id = uuid.uuid4().hex[:12]
        self.session = self._new_session(None)
        self._requests = itertools.count(1)
        self._prev_total_ms: float | None = None
        self._endpoint = "infer"  # of the frame being handled, for its metrics

    def _new_session(self, session_id: str | None) -> Session:
        return Session(id=session_id or uuid.uuid4().hex,
                       sequence_id=next(_sequence_ids) if self.policy.stateful else 0)

    def _log_extra(self, **extra: Any) -> dict[str, Any]:
        return {"policy": self.policy.name, "connection": self.connection_id, "session_id": self.session.id, **extra}

    async def run(self) -> None:
        await self.websocket.send_bytes(encode(self.policy.metadata))
        try:
            while True:
                message = await self._next_message()
                if message is None or message["type"] == "websocket.disconnect":
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

    async def _next_message(self) -> dict[str, Any] | None:
        """The next websocket message; None after closing the connection for idleness or a drain.

        The drain rule: a frame this connection read before the drain began is answered (the caller
        handles it; the drain waits for it); a frame read after it began is not, and the connection
        closes with 1012 (the robot reconnects to another replica). "Read" is the moment
        `websocket.receive()` handed the frame over, compared with `Drain.draining` at that moment, so
        the outcome never depends on how the event loop schedules the two."""
        if not self.drain.draining:
            receive = asyncio.ensure_future(self._read())
            await asyncio.wait((receive, self.drain.signal()), timeout=self.settings.idle_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
            if receive.done():
                message, read_while_draining = receive.result()
                if not read_while_draining or message["type"] == "websocket.disconnect":
                    return message
            else:
                receive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receive
        if self.drain.draining:
            log.info("closing connection: server shutting down", extra=self._log_extra())
            await self.websocket.close(status.WS_1012_SERVICE_RESTART, "server shutting down")
        else:
            log.info("closing idle connection", extra=self._log_extra())
            await self.websocket.close(status.WS_1000_NORMAL_CLOSURE, "idle timeout")
        return None

    async def _read(self) -> tuple[dict[str, Any], bool]:
        """The next websocket message, and whether the drain had begun when it was read."""
        message = await self.websocket.receive()
        return message, self.drain.draining

    async def _handle(self, frame: bytes, started: float) -> None:
        request_id = f"{self.connection_id}-{next(self._requests)}"
        self._endpoint = "infer"
        self.metrics.in_flight.inc()
        try:
            try:
                answer = await self._answer(frame, request_id)
            except Refused as refused:
                await self._send_error(refused.text, refused.outcome, self._endpoint, request_id)
                return
            except Exception as error:  # whatever else goes wrong on one frame must not cost the robot its socket
                log.exception("unexpected error on a frame", extra=self._log_extra(request_id=request_id))
                await self._send_error(f"internal server error on this frame ({type(error).__name__}); the "
                                       "connection stays open", "internal_error", self._endpoint, request_id)
                return
            if isinstance(answer, str):  # a convention's text reply (RoboArena's reset)
                await self.websocket.send_text(answer)
            else:
                await self.websocket.send_bytes(answer)
        finally:
            self.metrics.in_flight.dec()
        total = time.monotonic() - started
        self.metrics.requests.labels(self.policy.name, self._endpoint, "ok", PROTOCOL).inc()
        if self._endpoint == "infer":
            self._prev_total_ms = total * 1000
            self.metrics.latency.labels(self.policy.name, PROTOCOL).observe(total)

    async def _answer(self, frame: bytes, request_id: str) -> bytes | str:
        """The encoded answer to one frame (in the policy's answer convention, with the client's array
        markers); raises Refused with the text the robot gets instead."""
        try:
            seen: set[str] = set()
            message = decode_frame(frame, seen)
            self.encoding.observe(seen)
            self._endpoint, session_id, seed = self._control(message)
            if session_id is not None and session_id != self.session.id:
                await self._end_sequence()
                self.session = self._new_session(session_id)
            if self._endpoint == "reset":
                await self._end_sequence()
                self.session = self._new_session(session_id)
                return reset_answer(self.policy, self.encoding.markers)
            if session_id is None and self.policy.convention.session_id_required:
                raise ProtocolError(f"policy {self.policy.name!r} needs a 'session_id' with every infer (its "
                                    "handshake says needs_session_id: true)")
            observation = {key: value for key, value in message.items() if key not in CONTROL_KEYS}
            rtc = rtc_request(self.policy, message, self.session.last_chunk)
            tensors = observation_to_tensors(self.policy, observation, seed)
            if rtc is not None and self.policy.rtc is not None:
                tensors.update(rtc_tensors(self.policy.rtc, rtc))
        except ProtocolError as error:
            raise Refused(str(error), "bad_request") from None

        sequence = None
        if self.policy.stateful:
            try:
                self.live_sessions.admit(self.session)
            except SessionLimitReached as error:
                raise Refused(str(error), "session_limit") from None
            # The first call of a session (a new one, after a reset or a new session_id) starts a Triton
            # sequence: the model sees it as a reset, as vllm-omni's `reset=True`.
            sequence = SequenceFlags(self.session.sequence_id, start=self.session.is_first_call)
        infer_start = time.monotonic()
        try:
            outputs = await self._infer_in_session(tensors, request_id, sequence)
        except BackendUnavailable as error:
            raise Refused(str(error), "backend_unavailable") from None
        except SequenceLost as lost:
            # The session goes on under its id with a fresh Triton sequence (on whichever replica takes it);
            # the robot must know that the policy's memory of it is gone.
            self.live_sessions.release(self.session)
            self.session = self._new_session(self.session.id)
            raise Refused(f"policy {self.policy.name!r} lost this session's state ({lost}); the session starts "
                          "over with your next frame", "session_restarted") from None
        except BackendRejected as error:
            raise Refused(f"policy {self.policy.name!r} failed on this observation: {error}", "backend_error") from None
        infer_ms = (time.monotonic() - infer_start) * 1000
        # Triton answered: its sequence is live from here on, whether or not the robot gets this answer
        # (the NaN guard below may refuse it), so the next call continues it and the session's end ends it.
        self.session.calls += 1
        if self.policy.stateful:
            self.session.last_tensors = tensors
        response = unbatch(self.policy, outputs)
        self._check_finite(response)
        if self.policy.rtc is not None:  # what the robot now executes: remembered-mode RTC continues from it
            self.session.last_chunk = answered_chunk(self.policy.rtc, outputs)

        timing: dict[str, float] = {"infer_ms": infer_ms}
        if self._prev_total_ms is not None:
            timing["prev_total_ms"] = self._prev_total_ms
        log.debug("inference", extra=self._log_extra(request_id=request_id, infer_ms=round(infer_ms, 3)))
        return infer_answer(self.policy, response, timing, self.encoding.markers)

    async def _infer_in_session(self, tensors: dict[str, np.ndarray], request_id: str,
                                sequence: SequenceFlags | None) -> dict[str, np.ndarray]:
        try:
            return await self.backend.infer(self.policy, tensors, request_id, sequence)
        except BaseException:
            if self.session.is_first_call:  # its sequence never started: not a live session
                self.live_sessions.release(self.session)
            raise

    def _check_finite(self, response: dict[str, Any]) -> None:
        problem = nonfinite_answer(self.policy, response)
        if problem is not None:
            raise Refused(problem, "nonfinite_output")

    @staticmethod
    def _control(message: dict[str, Any]) -> tuple[str, str | None, int | None]:
        endpoint = message.get("endpoint", "infer")
        if not isinstance(endpoint, str):
            raise ProtocolError(f"endpoint must be the string 'infer' or 'reset', got {_preview(endpoint)}")
        if endpoint not in ("infer", "reset"):
            raise ProtocolError(f"unknown endpoint {endpoint[:40]!r}; use 'infer' or 'reset'")
        session_id = message.get("session_id")
        if isinstance(session_id, np.integer):
            session_id = int(session_id)
        if session_id is not None and (not isinstance(session_id, (str, int)) or isinstance(session_id, bool)):
            raise ProtocolError(f"session_id must be a string or an integer, got {_preview(session_id)}")
        if isinstance(session_id, str) and len(session_id) > MAX_SESSION_ID_CHARS:
            raise ProtocolError(f"session_id must be at most {MAX_SESSION_ID_CHARS} characters, got {len(session_id)}")
        seed = message.get("seed")
        if seed is not None:
            if isinstance(seed, np.integer):
                seed = int(seed)
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
                raise ProtocolError(f"seed must be an integer in [0, 2^63), got {_preview(seed)}")
        return endpoint, None if session_id is None else str(session_id), seed

    async def _send_error(self, text: str, outcome: str, endpoint: str = "infer", request_id: str = "") -> None:
        self.metrics.requests.labels(self.policy.name, endpoint, outcome, PROTOCOL).inc()
        log.warning("request failed", extra=self._log_extra(request_id=request_id, outcome=outcome, error=text))
        await self.websocket.send_text(text)

    async def _end_sequence(self) -> None:
        """End the session's Triton sequence (reset, new session id, disconnect), if one was started."""
        session = self.session
        self.live_sessions.release(session)
        if not self.policy.stateful or session.last_tensors is None:
            return
        tensors, session.last_tensors = session.last_tensors, None
        request_id = f"{self.connection_id}-end-{session.sequence_id}"
        # Triton ends a sequence only with a request: replay the last observation, drop the result.
        try:
            await self.backend.infer(self.policy, tensors, request_id, SequenceFlags(session.sequence_id, end=True))
        except (BackendUnavailable, BackendRejected) as error:
            # The robot has moved on; Triton frees the sequence's slot at its idle timeout instead.
            log.warning("could not end the session's Triton sequence", extra=self._log_extra(
                request_id=request_id, sequence_id=session.sequence_id, error=str(error)))
