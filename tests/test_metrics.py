"""Per-replica metric series live as long as their replica: under pod churn the label sets stay bounded."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import generate_latest

from openpi_triton.config import Settings
from openpi_triton.front.app import create_app
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.process import free_port
from openpi_triton.triton.addresses import Target
from openpi_triton.triton.replicas import ReplicaPool

GONE, STAYS = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"  # nothing listens: both stay not ready


def exposition(metrics: FrontMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_replica_that_leaves_takes_its_series_along():
    addresses = [GONE, STAYS]

    async def resolver(target: Target) -> list[str]:
        return list(addresses)

    async def scenario() -> tuple[str, str]:
        pool = ReplicaPool("triton.test:8001", timeout_s=1.0, resolve_interval_s=0.01, check_interval_s=0.01,
                           resolver=resolver)
        metrics = FrontMetrics(replicas=pool)
        pool.on_call, pool.on_leave = metrics.replica_call, metrics.forget_replica  # as create_app wires them
        await pool.start()
        try:
            for replica in (GONE, STAYS):  # calls as the routing reports them
                metrics.replica_call(replica, "ok", 0.01)
                metrics.replica_call(replica, "unreachable", 0.0)
            before = exposition(metrics)
            addresses.remove(GONE)  # its pod went away
            deadline = time.monotonic() + 30
            while f'replica="{GONE}"' in exposition(metrics) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return before, exposition(metrics)
        finally:
            await pool.close()

    before, after = asyncio.run(scenario())
    assert f'openpi_triton_replica_requests_total{{outcome="unreachable",replica="{GONE}"}}' in before
    assert f'replica="{GONE}"' not in after
    assert f'openpi_triton_replica_requests_total{{outcome="ok",replica="{STAYS}"}} 1.0' in after
    assert f'openpi_triton_replica_request_seconds_count{{replica="{STAYS}"}} 1.0' in after


def test_the_app_forgets_the_series_of_replicas_that_leave():
    app = create_app(Settings(triton_url="triton.test:8001"))
    assert app.state.backend.on_leave == app.state.metrics.forget_replica
