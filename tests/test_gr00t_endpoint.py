"""The GR00T endpoint's own machinery, without Triton: its loops survive socket errors without spinning and
without stopping the server's shutdown, and a request split into chunks does not leave chunks running when
one fails."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

import numpy as np
import pytest
import zmq
import zmq.asyncio

from benchmarks.instant_backend import InstantBackend
from openpi_triton import config
from openpi_triton.config import Settings
from openpi_triton.front.app import create_app
from openpi_triton.front.codec import Refused
from openpi_triton.front.drain import Drain
from openpi_triton.front.gr00t.dispatch import Dispatcher
from openpi_triton.front.gr00t.server import Gr00tServer
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.process import free_port
from openpi_triton.triton.backend import BackendRejected

from .conftest import MODEL_REPOSITORY

GR00T_POLICY = "so100"


def so100_backend() -> InstantBackend:
    return InstantBackend([(MODEL_REPOSITORY, GR00T_POLICY)])


def gr00t_settings(**overrides: object) -> Settings:
    return Settings(host="127.0.0.1", port=free_port(), gr00t_port=free_port(), default_policy=GR00T_POLICY,
                    **overrides)


def test_a_persistent_socket_error_is_retried_after_a_pause_not_in_a_loop(monkeypatch):
    monkeypatch.setattr(config, "GR00T_WATCH_RETRY_S", 60.0)  # the first retry comes after the test ends

    class BrokenMonitor:
        polls = 0

        async def poll(self, timeout_ms: float) -> int:
            self.polls += 1
            await asyncio.sleep(0)
            raise zmq.ZMQError(zmq.ENOTSOCK)

    async def scenario() -> int:
        server = Gr00tServer(gr00t_settings(), so100_backend(), FrontMetrics(), Drain())
        server._monitor = monitor = BrokenMonitor()
        watch = asyncio.create_task(server._watch())
        for _ in range(50):  # turns of the event loop: a busy loop would poll on each
            await asyncio.sleep(0)
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
        return monitor.polls

    assert asyncio.run(scenario()) == 1


def test_a_failing_receive_is_logged_and_shutdown_still_closes_the_backend(monkeypatch, caplog):
    monkeypatch.setattr(config, "GR00T_WATCH_RETRY_S", 60.0)

    async def broken_receive(self, *args, **kwargs):
        raise zmq.ZMQError(zmq.EFSM, "the socket broke")

    monkeypatch.setattr(zmq.asyncio.Socket, "recv_multipart", broken_receive)
    backend = so100_backend()
    app = create_app(gr00t_settings(), backend=backend)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            for _ in range(10):
                await asyncio.sleep(0)  # the receive loop runs, and fails

    with caplog.at_level(logging.ERROR, logger="openpi_triton.front"):
        asyncio.run(scenario())  # no error raised at shutdown
    assert backend.closed
    assert any("could not receive" in record.getMessage() and record.exc_info for record in caplog.records)


def test_a_failed_chunk_cancels_its_siblings():
    started, cancelled = [], []

    class FirstChunkFails(InstantBackend):
        async def infer(self, policy, tensors, request_id, sequence=None):
            started.append(request_id)
            if request_id.endswith("-0"):
                await asyncio.sleep(0)
                raise BackendRejected("bad chunk")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(request_id)
                raise

    backend = FirstChunkFails([(MODEL_REPOSITORY, GR00T_POLICY)])
    policy = replace(backend.policies[GR00T_POLICY], max_batch_size=1)
    dispatcher = Dispatcher(gr00t_settings(), backend, FrontMetrics(), Drain())

    async def scenario() -> None:
        with pytest.raises(Refused, match="bad chunk"):
            await asyncio.wait_for(dispatcher.infer(policy, {"x": np.zeros((3, 2))}, "r"), 10)

    asyncio.run(scenario())
    assert started == ["r-0", "r-1", "r-2"] and sorted(cancelled) == ["r-1", "r-2"]


def test_a_failing_gr00t_start_leaks_no_replica_watcher_or_channel():
    """The GR00T port is taken: the lifespan fails, and the replica pool it had started is closed."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(host="127.0.0.1", port=free_port(), gr00t_port=taken.getsockname()[1],
                            triton_url=f"127.0.0.1:{free_port()}", triton_timeout_s=1.0)
        app = create_app(settings)
        pool = app.state.backend

        async def scenario() -> list[str]:
            with pytest.raises(OSError, match="cannot listen for GR00T clients"):
                async with app.router.lifespan_context(app):
                    pass
            return [task.get_name() for task in asyncio.all_tasks() if task is not asyncio.current_task()]

        assert asyncio.run(scenario()) == []  # no watcher (nor readiness refresher) left running
        assert pool.replicas() == []  # every replica's channels closed
