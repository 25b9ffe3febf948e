"""Graceful shutdown that drains: stop accepting, let every frame already received get its answer,
close each robot's websocket with 1012 once it has nothing in flight, and only then let uvicorn finish
(and the caller stop tritonserver). Bounded by the drain timeout; past it uvicorn closes what is left.

uvicorn's own shutdown sends 1012 to every websocket at once, dropping the answers being computed, so
`DrainingServer` drains before handing over to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

import uvicorn

log = logging.getLogger("openpi_triton.front")


class Drain:
    """The front's shutdown state, shared by the app's connections and the server."""

    def __init__(self) -> None:
        self.draining = False
        self._signal: asyncio.Future[None] | None = None
        self._connections = 0
        self._all_closed: asyncio.Event | None = None

    def signal(self) -> asyncio.Future[None]:
        """A future that is done once draining has begun (one per event loop, made on first use)."""
        loop = asyncio.get_running_loop()
        if self._signal is None or self._signal.get_loop() is not loop:
            self._signal = loop.create_future()
            if self.draining:
                self._signal.set_result(None)
        return self._signal

    def begin(self) -> None:
        """Mark the drain as begun: from now on connections answer only the frames they have already read."""
        self.draining = True
        signal = self.signal()
        if not signal.done():
            signal.set_result(None)

    def opened(self) -> None:
        self._connections += 1

    def closed(self) -> None:
        self._connections -= 1
        if self._connections == 0 and self._all_closed is not None:
            self._all_closed.set()

    async def drain(self, timeout_s: float, abandon: Callable[[], bool] = lambda: False) -> int:
        """Begin draining and wait until every robot connection has closed itself, at most `timeout_s`
        and not once `abandon()` is true (a second Ctrl-C). Returns how many were still open."""
        self.begin()
        self._all_closed = asyncio.Event()
        if self._connections == 0:
            return 0
        started = time.monotonic()
        log.info("draining", extra={"connections": self._connections, "timeout_s": timeout_s})
        deadline = started + timeout_s
        while self._connections and not abandon() and time.monotonic() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), min(0.2, max(deadline - time.monotonic(), 0)))
        if self._connections:
            log.warning("drain ended early: closing the connections left", extra={"connections": self._connections})
        else:
            log.info("drained", extra={"seconds": round(time.monotonic() - started, 3)})
        return self._connections


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain, self.drain_timeout_s = drain, drain_timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # stop accepting before draining: no robot arrives while others leave
            server.close()
        for sock in sockets or []:
            sock.close()
        await self.drain.drain(self.drain_timeout_s, abandon=lambda: self.force_exit)
        await super().shutdown(sockets)
