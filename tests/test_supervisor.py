"""The supervisor's decisions, on a stand-in for tritonserver (the real one is killed in test_faults.py):
restart with a growing delay while starts fail, reload a model whose stub died, restart when the reload
fails, and no restart once stopping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from openpi_triton.triton.embedded import EmbeddedTritonError
from openpi_triton.triton.health import Health
from openpi_triton.triton.supervisor import TritonSupervisor

from .waiting import wait_until


class FakeTriton:
    """Records what the supervisor asks of it; `failing_starts` starts fail before one succeeds."""

    http_url = "http://127.0.0.1:9"  # nothing listens: the model-readiness probe says "not ready"

    def __init__(self, failing_starts: int = 0, reload_fails: bool = False) -> None:
        self.failing_starts, self.reload_fails = failing_starts, reload_fails
        self.calls: list[str] = []
        self.running = False
        self.pid = 100

    def start(self, cancelled: Callable[[], bool] | None = None) -> FakeTriton:
        self.calls.append("start")
        if self.calls.count("start") > 1 and self.failing_starts > 0:
            self.failing_starts -= 1
            raise EmbeddedTritonError(f"port taken (attempt left: {self.failing_starts})\nlog lines")
        self.running, self.pid = True, self.pid + 1
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        self.calls.append("stop")
        self.running = False

    def exited(self) -> bool:
        return not self.running and "start" in self.calls

    def python_stubs(self) -> dict[int, str]:
        return {}

    def reload_model(self, name: str, timeout_s: float = 120.0) -> None:
        self.calls.append(f"reload {name}")
        if self.reload_fails:
            raise EmbeddedTritonError(f"unload of model {name!r} failed: boom")

    @property
    def child(self) -> None:
        return None


class RecordingHealth(Health):
    """Health that keeps every server outage it is told of, (reason, action) in order: what /readyz and the
    logs would have said at each moment, without sampling them."""

    def __init__(self) -> None:
        super().__init__(heals=True)
        self.told: list[tuple[str, str]] = []

    def server_down(self, reason: str, action: str) -> None:
        self.told.append((reason, action))
        super().server_down(reason, action)


def backoff_delays(health: RecordingHealth) -> list[float]:
    """The waits the supervisor announced before restart attempts, in order."""
    return [float(action.split(" in ")[1].removesuffix(" s")) for _, action in health.told if " in " in action]


def test_failed_restarts_are_retried_with_a_growing_delay_and_told_to_health():
    triton, health = FakeTriton(failing_starts=2), RecordingHealth()
    supervisor = TritonSupervisor(triton, health, restart_delay_s=0.05, restart_max_delay_s=1.0).start()
    try:
        triton.running = False  # it died
        wait_until(lambda: health.counters().restarts == 1, "restarted after two failed starts")
    finally:
        supervisor.stop()
    assert triton.calls.count("start") == 4  # the first start, two failures, the restart
    # It had run only a moment: a wait before the first attempt, then one after each failure, each twice as long.
    assert backoff_delays(health) == [0.05, 0.1, 0.2]
    reasons = [reason for reason, _ in health.told]
    assert any("restart attempt 1 failed: port taken" in reason for reason in reasons), health.told
    assert ("restart attempt 2 failed" in health.told[-2][0] and health.told[-2][1] == "restarting it in 0.2 s"), \
        health.told
    assert health.problem([]) is None and health.counters().outages == {"tritonserver": 1}


def test_a_model_a_call_reports_broken_is_reloaded_and_a_failed_reload_restarts_the_server():
    triton, health = FakeTriton(), Health(heals=True)
    with TritonSupervisor(triton, health, restart_delay_s=0.01):
        health.call_failed("libero_preprocess", "its python stub process is not healthy", time.monotonic())
        wait_until(lambda: health.counters().reloads.get("libero_preprocess") == 1, "reloaded")
        assert "start" not in triton.calls[1:] and health.problem(["libero_preprocess"]) is None

        triton.reload_fails = True
        health.call_failed("policy_core", "its python stub process is not healthy", time.monotonic())
        wait_until(lambda: health.counters().restarts == 1, "restarted after the reload failed")
    assert triton.calls[:4] == ["start", "reload libero_preprocess", "reload policy_core", "stop"]
    assert health.counters().reloads == {"libero_preprocess": 1}


def test_stopping_ends_the_restarts():
    triton, health = FakeTriton(failing_starts=1000), RecordingHealth()
    supervisor = TritonSupervisor(triton, health, restart_delay_s=0.01, restart_max_delay_s=0.02).start()
    triton.running = False
    wait_until(lambda: triton.calls.count("start") > 3, "a few failed restarts")
    supervisor.stop()
    # Only the supervisor's thread starts tritonserver: once it has ended, no restart can follow.
    assert not [thread for thread in threading.enumerate() if thread.name == "triton-supervisor"]
    assert triton.calls[-1] == "stop"
    assert max(backoff_delays(health)) == 0.02  # the delay doubled up to its bound, and no further
