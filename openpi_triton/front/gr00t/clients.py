"""Admission of GR00T clients: the front's connection limit and idle timeout applied to ZeroMQ peers. A
client counts from its first request until it disconnects (its TCP connection closes) or stays silent for
--idle-timeout; each may have one request being answered at a time (GR00T's REQ sockets)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("openpi_triton.front")


@dataclass
class Client:
    last_seen: float
    fd: int | None  # its TCP connection's descriptor, to notice its disconnect
    busy: bool = False


class ClientTable:
    """`on_count(n)`: told the number of clients whenever it changes (the connections gauge); `on_full()`:
    a new client refused at the limit (the rejections counter)."""

    def __init__(self, max_clients: int, idle_timeout_s: float, on_count: Callable[[int], None],
                 on_full: Callable[[], None]) -> None:
        self.max_clients, self.idle_timeout_s = max_clients, idle_timeout_s
        self.on_count, self.on_full = on_count, on_full
        self._clients: dict[bytes, Client] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def admit(self, identity: bytes, fd: int | None) -> str | None:
        """Count the client in (its first request) and mark it busy; or why its request is refused."""
        now = time.monotonic()
        client = self._clients.get(identity)
        if client is None:
            self.expire(now)
            if len(self._clients) >= self.max_clients:
                self.on_full()
                return (f"server at its limit of {self.max_clients} GR00T clients; try again later "
                        "(a client counts until it disconnects or stays silent for the idle timeout)")
            client = self._clients[identity] = Client(now, fd)
            self.on_count(len(self._clients))
        if client.busy:
            return "this client already has a request being answered; send one request at a time (REQ/REP)"
        client.last_seen, client.fd, client.busy = now, fd, True
        return None

    def release(self, identity: bytes) -> None:
        """Its request was answered."""
        client = self._clients.get(identity)
        if client is not None:
            client.busy = False
            client.last_seen = time.monotonic()

    def expire(self, now: float) -> None:
        idle = [identity for identity, client in self._clients.items()
                if not client.busy and now - client.last_seen > self.idle_timeout_s]
        for identity in idle:
            del self._clients[identity]
        if idle:
            log.info("forgot idle GR00T clients", extra={"clients": len(idle)})
            self.on_count(len(self._clients))

    def disconnected(self, fd: int) -> None:
        """The TCP connection `fd` closed: its clients (not waiting for an answer) are gone."""
        gone = [identity for identity, client in self._clients.items() if client.fd == fd and not client.busy]
        for identity in gone:
            del self._clients[identity]
        if gone:
            self.on_count(len(self._clients))
