"""The GR00T endpoint (`serve --gr00t-port`): Isaac GR00T's policy protocol over ZeroMQ, beside the websocket
front, in the same process and event loop and on the same backend, so GR00T clients' requests reach Triton
together with the websocket robots' and are batched with them.

This module is the socket's lifecycle: one ROUTER socket serves every client (GR00T's REQ sockets) at once:
each request is handled in its own task (`dispatch`) and answered to its sender when done, whatever the
others are doing, where GR00T's own REP server answers one client at a time. Admission (`clients`) applies
the websocket front's limits: a message over --max-frame-bytes makes libzmq drop that client's connection
before reading it (as the websocket closes with 1009); at most --max-connections clients; dead clients are
found by ZMTP heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from openpi_triton import config
from openpi_triton.config import Settings
from openpi_triton.front.drain import Drain
from openpi_triton.front.gr00t.clients import ClientTable
from openpi_triton.front.gr00t.codec import encode_reply
from openpi_triton.front.gr00t.dispatch import PROTOCOL, Dispatcher, default_kill
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.triton.backend import Backend

log = logging.getLogger("openpi_triton.front")


def _source_fd(frame: zmq.Frame) -> int | None:
    with contextlib.suppress(zmq.ZMQError, AttributeError, TypeError):
        return int(frame.get(zmq.SRCFD))
    return None


def _address(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _report_end(task: asyncio.Task[None]) -> None:
    """A loop of the endpoint that ended by itself (they run until stopped): said at once, not at stop()."""
    if not task.cancelled() and task.exception() is not None:
        log.error("GR00T endpoint loop ended", extra={"loop": task.get_name()}, exc_info=task.exception())


class Backoff:
    """Waits between retries of a loop that keeps failing: GR00T_WATCH_RETRY_S, doubling up to the maximum
    (read from `config` at each wait); back to the start after a success."""

    def __init__(self) -> None:
        self._delay: float | None = None

    def succeeded(self) -> None:
        self._delay = None

    async def wait(self) -> None:
        self._delay = (config.GR00T_WATCH_RETRY_S if self._delay is None
                       else min(self._delay * 2, config.GR00T_WATCH_RETRY_MAX_S))
        await asyncio.sleep(self._delay)


class Gr00tServer:
    def __init__(self, settings: Settings, backend: Backend, metrics: FrontMetrics, drain: Drain,
                 on_kill: Callable[[], None] = default_kill) -> None:
        if settings.gr00t_port is None:
            raise ValueError("the GR00T endpoint needs settings.gr00t_port")
        self.settings, self.metrics = settings, metrics
        self.address = _address(settings.host, settings.gr00t_port)
        self.dispatcher = Dispatcher(settings, backend, metrics, drain, on_kill)
        self.clients = ClientTable(
            settings.max_connections, settings.idle_timeout_s,
            on_count=lambda n: metrics.connections.labels(settings.gr00t_policy, PROTOCOL).set(n),
            on_full=lambda: metrics.rejected.labels("capacity").inc())
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
        sock.setsockopt(zmq.HEARTBEAT_IVL, config.GR00T_HEARTBEAT_INTERVAL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, config.GR00T_HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, config.GR00T_HEARTBEAT_TIMEOUT_MS)
        if ":" in self.settings.host:
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.bind(self.address)
        except zmq.ZMQError as error:
            sock.close()
            self._context.term()
            self._context = None
            raise OSError(f"cannot listen for GR00T clients on {self.address}: {error}") from None
        self._socket = sock
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._loops = [asyncio.create_task(self._receive(), name="gr00t-receive"),
                       asyncio.create_task(self._watch(), name="gr00t-watch")]
        for task in self._loops:
            task.add_done_callback(_report_end)
        log.info("GR00T endpoint listening", extra={"address": self.address, "policy": self.settings.gr00t_policy})

    async def stop(self) -> None:
        """Stop receiving; requests still in flight (the drain waited for them) get a moment, then the socket
        closes, whatever the loops ended with."""
        try:
            for task in self._loops:
                task.cancel()
            for task in self._loops:
                # A loop that ended with an error was reported when it ended (`_report_end`): not raised here,
                # where it would keep the socket and the backend from closing.
                with contextlib.suppress(BaseException):
                    await task
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=1.0)
            for task in self._handlers:
                task.cancel()
        finally:
            self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._socket.disable_monitor()
            self._socket.close(linger=0)
        if self._monitor is not None:
            self._monitor.close(linger=0)
        if self._context is not None:
            self._context.term()
        self._socket = self._monitor = self._context = None

    async def _watch(self) -> None:
        """Forget clients whose connection closed (monitor events) or that went idle."""
        assert self._monitor is not None
        backoff = Backoff()
        while True:
            try:
                if await self._monitor.poll(config.GR00T_EXPIRY_CHECK_S * 1000):
                    event = parse_monitor_message(await self._monitor.recv_multipart())
                    if event["event"] == zmq.EVENT_DISCONNECTED:
                        self.clients.disconnected(int(event["value"]))
                self.clients.expire(time.monotonic())
                backoff.succeeded()
            except (zmq.ZMQError, ValueError, KeyError):  # an unreadable event: the idle timeout still applies
                log.exception("unreadable GR00T socket event")
                await backoff.wait()

    async def _receive(self) -> None:
        assert self._socket is not None
        backoff = Backoff()
        while True:
            try:
                frames = await self._socket.recv_multipart(copy=False)
                backoff.succeeded()
            except zmq.ZMQError:  # the socket itself failed: said, and tried again after a pause
                log.exception("GR00T endpoint could not receive")
                await backoff.wait()
                continue
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
        refusal = self.clients.admit(identity, _source_fd(body[0]))
        if refusal is not None:
            await self._send(envelope, encode_reply({"error": refusal}))
            return
        task = asyncio.create_task(self._handle(identity, envelope, body[0].buffer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, identity: bytes, envelope: list[bytes], body: memoryview) -> None:
        request_id = f"gr00t-{identity.hex()[:10]}-{next(self._requests)}"
        try:
            await self.dispatcher.handle(body, request_id, lambda payload: self._send(envelope, payload))
        finally:
            self.clients.release(identity)

    async def _send(self, envelope: list[bytes], payload: bytes) -> None:
        assert self._socket is not None
        try:
            await self._socket.send_multipart([*envelope, payload])
        except zmq.ZMQError as error:  # the client left (EHOSTUNREACH): nobody to answer
            log.info("GR00T client gone before its reply", extra={"error": str(error)})
