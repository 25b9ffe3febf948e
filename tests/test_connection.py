"""The front's per-connection rules, exactly, on fakes (no Triton): refusals on a server without the
denial-response extension, the end of a stateful session's Triton sequence, the drain rule, and a frame
over the size limit sent by a stock websockets client to a real uvicorn.

The fakes stand in for Triton only; the front's code under test is the shipped one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openpi_client import msgpack_numpy
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from openpi_triton.config import MIB, Settings
from openpi_triton.front.app import create_app
from openpi_triton.front.drain import Drain
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.session import RobotConnection
from openpi_triton.process import free_port
from openpi_triton.triton.client import BackendUnavailable, SequenceFlags
from openpi_triton.triton.repository import policy_from_repository

from .conftest import TEST_MODEL_REPOSITORY, running_front

STEP_TIMEOUT_S = 30.0  # every await on the connection under test is bounded by this
COUNTER = policy_from_repository(TEST_MODEL_REPOSITORY, "session_counter")  # a stateful policy
STATELESS = dataclasses.replace(COUNTER, name="stateless_counter", stateful=False)
COUNTER_FRAME = msgpack_numpy.packb({"inputs": {"x": np.zeros(1, np.float32)}})


class FakeBackend:
    """Triton's stand-in: answers the counter policy's outputs at once, with `fills[i]` in the i-th call's
    float output (NaN trips the front's guard). Records each call's sequence flags. `hold`: calls wait on
    it; `end_error`: what a call that ends a sequence raises."""

    def __init__(self, fills: tuple[float, ...] = (), hold: asyncio.Event | None = None,
                 end_error: Exception | None = None) -> None:
        self.fills, self.hold, self.end_error = list(fills), hold, end_error
        self.calls: list[SequenceFlags | None] = []
        self.called = asyncio.Event()
        self.policies = {COUNTER.name: COUNTER, STATELESS.name: STATELESS}
        self.health = None

    async def infer(self, policy, tensors, request_id, sequence=None) -> dict[str, np.ndarray]:
        self.calls.append(sequence)
        self.called.set()
        if sequence is not None and sequence.end and self.end_error is not None:
            raise self.end_error
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), STEP_TIMEOUT_S)
        fill = self.fills.pop(0) if self.fills else 1.0
        return {"step": np.full((1, 1), fill, np.float32), "live_sequences": np.ones((1, 1), np.int64),
                "request_id": np.array([[request_id.encode()]], object)}

    async def discover(self, force: bool = False) -> dict[str, Any]:
        return self.policies

    async def policy(self, name: str) -> Any:
        return self.policies.get(name)

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        return True, "ready"

    async def close(self) -> None:
        pass


class FakeWebSocket:
    """A robot's accepted websocket: frames the test puts in `incoming`; what the front sent, in order."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[bytes | str] = []
        self.closed: tuple[int, str] | None = None
        self.reading = asyncio.Event()  # set while the front waits for a frame

    def put(self, frame: bytes) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "bytes": frame})

    def put_disconnect(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def receive(self) -> dict[str, Any]:
        self.reading.set()
        try:
            return await self.incoming.get()
        finally:
            self.reading.clear()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason or "")

    def answers(self) -> list[Any]:
        """What the robot got after the handshake: decoded answers, or error texts."""
        return [m if isinstance(m, str) else msgpack_numpy.unpackb(m) for m in self.sent[1:]]


def connection(backend: FakeBackend, policy: Any = COUNTER, drain: Drain | None = None,
               **settings: Any) -> tuple[RobotConnection, FakeWebSocket]:
    websocket = FakeWebSocket()
    return RobotConnection(websocket, policy, backend, Settings(**settings), FrontMetrics(), drain), websocket


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, STEP_TIMEOUT_S)


# --- refusals without the websocket.http.response extension ----------------------------------------


@pytest.mark.parametrize(("settings", "path", "says"), [
    ({"api_keys": ("s3cret",)}, "/", "missing or wrong API key"),
    ({}, "/v1/realtime/robot/openpi/no_such_policy", "unknown policy 'no_such_policy'"),
])
def test_a_server_without_denial_responses_refuses_with_close_1008(settings, path, says):
    """ASGI servers without the `websocket.http.response` extension (older uvicorn, hypercorn) cannot send
    an HTTP error during the upgrade: the refusal is a websocket close with 1008 and the reason."""
    app = create_app(Settings(default_policy=COUNTER.name, **settings), FakeBackend())
    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "http_version": "1.1",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": [],
             "subprotocols": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(bounded(app(scope, receive, send)))
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)], sent
    assert says in sent[0]["reason"]


# --- a stateful session's Triton sequence always ends ------------------------------------------------


def test_a_session_whose_first_answer_is_refused_still_ends_its_triton_sequence():
    """The NaN guard refuses the first answer, but Triton has started the sequence: the next call goes on
    with it (no second start), and the disconnect ends it."""
    async def scenario() -> tuple[FakeBackend, FakeWebSocket]:
        backend = FakeBackend(fills=(np.nan, 2.0))
        robot, websocket = connection(backend)
        websocket.put(COUNTER_FRAME)
        websocket.put(COUNTER_FRAME)
        websocket.put_disconnect()
        await bounded(robot.run())
        return backend, websocket

    backend, websocket = asyncio.run(scenario())
    first, second = websocket.answers()
    assert isinstance(first, str) and "NaN" in first
    assert isinstance(second, dict) and second["step"][0] == 2.0
    flags = [(call.start, call.end) for call in backend.calls]
    assert flags == [(True, False), (False, False), (False, True)], flags
    assert len({call.id for call in backend.calls}) == 1


def test_a_session_refused_on_its_only_frame_ends_its_sequence_on_disconnect():
    async def scenario() -> FakeBackend:
        backend = FakeBackend(fills=(np.nan,))
        robot, websocket = connection(backend)
        websocket.put(COUNTER_FRAME)
        websocket.put_disconnect()
        await bounded(robot.run())
        return backend

    backend = asyncio.run(scenario())
    assert [(call.start, call.end) for call in backend.calls] == [(True, False), (False, True)]


def test_a_sequence_that_cannot_be_ended_is_logged(caplog):
    async def scenario() -> FakeBackend:
        backend = FakeBackend(end_error=BackendUnavailable("policy backend unavailable: Triton is down"))
        robot, websocket = connection(backend)
        websocket.put(COUNTER_FRAME)
        websocket.put_disconnect()
        await bounded(robot.run())
        return backend

    with caplog.at_level(logging.WARNING, logger="openpi_triton"):
        backend = asyncio.run(scenario())
    assert backend.calls[-1].end
    failed = [r for r in caplog.records if "could not end" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in caplog.records]
    assert failed[0].sequence_id == backend.calls[-1].id and "Triton is down" in failed[0].error


# --- the drain rule: frames read before the drain began are answered, later ones are not -----------------


def test_a_frame_in_flight_when_the_drain_begins_is_answered_then_the_connection_closes_1012():
    async def scenario() -> tuple[FakeBackend, FakeWebSocket]:
        drain, hold = Drain(), asyncio.Event()
        backend = FakeBackend(hold=hold)
        robot, websocket = connection(backend, STATELESS, drain)
        running = asyncio.ensure_future(robot.run())
        websocket.put(COUNTER_FRAME)
        await bounded(backend.called.wait())  # the frame is at the backend
        drain.begin()
        websocket.put(COUNTER_FRAME)  # arrives during the drain: not answered
        hold.set()
        await bounded(running)
        return backend, websocket

    backend, websocket = asyncio.run(scenario())
    assert [type(answer) for answer in websocket.answers()] == [dict]
    assert len(backend.calls) == 1
    assert websocket.closed == (1012, "server shutting down")


def test_a_frame_that_arrives_as_the_drain_begins_is_not_answered():
    """The frame reached the server, but the drain began before the connection read it: it is not
    answered, however the event loop orders the two (the rule replaces counting loop iterations)."""
    async def scenario() -> tuple[FakeBackend, FakeWebSocket]:
        drain = Drain()
        backend = FakeBackend()
        robot, websocket = connection(backend, STATELESS, drain)
        running = asyncio.ensure_future(robot.run())
        await bounded(websocket.reading.wait())  # the connection waits for a frame
        websocket.put(COUNTER_FRAME)
        drain.begin()
        await bounded(running)
        return backend, websocket

    backend, websocket = asyncio.run(scenario())
    assert websocket.answers() == [] and backend.calls == []
    assert websocket.closed == (1012, "server shutting down")


def test_a_frame_read_just_before_the_drain_began_is_answered():
    async def scenario() -> tuple[FakeBackend, FakeWebSocket]:
        drain = Drain()
        backend = FakeBackend()
        robot, websocket = connection(backend, STATELESS, drain)
        original = websocket.receive

        async def receive_then_drain() -> dict[str, Any]:
            message = await original()
            asyncio.get_running_loop().call_soon(drain.begin)  # the drain begins right after this read
            return message

        websocket.receive = receive_then_drain  # type: ignore[method-assign]
        websocket.put(COUNTER_FRAME)
        await bounded(robot.run())
        return backend, websocket

    backend, websocket = asyncio.run(scenario())
    assert [type(answer) for answer in websocket.answers()] == [dict] and len(backend.calls) == 1
    assert websocket.closed == (1012, "server shutting down")


def test_a_connection_opened_during_the_drain_answers_nothing():
    async def scenario() -> FakeWebSocket:
        drain = Drain()
        drain.begin()
        robot, websocket = connection(FakeBackend(), STATELESS, drain)
        websocket.put(COUNTER_FRAME)
        await bounded(robot.run())
        return websocket

    websocket = asyncio.run(scenario())
    assert websocket.answers() == [] and websocket.closed == (1012, "server shutting down")


# --- a frame over the limit: close 1009 that the robot receives ---------------------------------------------


@pytest.fixture(scope="module")
def front_on_fakes() -> Iterator[str]:
    settings = Settings(host="127.0.0.1", port=free_port(), default_policy=STATELESS.name)
    with running_front(settings, FakeBackend()) as url:
        yield url


@contextlib.contextmanager
def stock_client(url: str) -> Iterator[Any]:
    ws = connect(url, max_size=None, compression=None, open_timeout=STEP_TIMEOUT_S, close_timeout=STEP_TIMEOUT_S)
    try:
        yield ws
    finally:
        ws.close()


@pytest.mark.parametrize("run", range(5))
def test_a_160_mib_frame_to_the_16_mib_limit_gets_close_1009(front_on_fakes, run):
    """The robot learns why: the close frame survives the 144 MiB it still sends after the refusal."""
    frame = bytes(160 * MIB)
    assert Settings().max_frame_bytes == 16 * MIB
    with stock_client(front_on_fakes) as ws:
        ws.recv(timeout=STEP_TIMEOUT_S)  # the handshake's metadata
        with pytest.raises(ConnectionClosed) as closed:
            ws.send(frame)
            ws.recv(timeout=STEP_TIMEOUT_S)
    assert closed.value.rcvd is not None, f"no close frame reached the robot: {closed.value!r}"
    assert closed.value.rcvd.code == 1009
    with stock_client(front_on_fakes) as other:  # the front serves on
        other.recv(timeout=STEP_TIMEOUT_S)
        other.send(COUNTER_FRAME)
        assert msgpack_numpy.unpackb(other.recv(timeout=STEP_TIMEOUT_S))["step"][0] == 1.0
