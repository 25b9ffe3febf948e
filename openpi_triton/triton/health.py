"""What is known about the backend's health beyond Triton's own readiness, shared by the front (which
reads it for /readyz, /metrics and error texts, and reports failed calls) and the supervisor of an
embedded tritonserver (which reports restarts and reloads, and acts on reported failures).

Triton 2.51 keeps a model READY after its python stub died, so a model counts as down here from the
moment a stub is seen dead or a call fails with "Stub process ... is not healthy", until it was
reloaded or served a call again. Thread-safe: the supervisor runs in its own thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

SERVER = "tritonserver"  # the component name of the server itself, beside model names
_STUB_UNHEALTHY = re.compile(r"Stub process '([^']+?)(?:_\d+)*' is not healthy")


def unhealthy_stub_model(message: str) -> str | None:
    """The model named by Triton's dead-stub error ("Stub process 'libero_preprocess_0_0' is not
    healthy": the stub of model instance <model>_<group>_<instance>), else None."""
    match = _STUB_UNHEALTHY.search(message)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Outage:
    reason: str  # what went wrong
    action: str  # what is being done about it; "" when nothing here can act
    since: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        return f"{self.reason}; {self.action}" if self.action else self.reason


@dataclass
class HealthCounters:
    restarts: int = 0
    reloads: dict[str, int] = field(default_factory=dict)
    outages: dict[str, int] = field(default_factory=dict)
    outage_seconds: dict[str, float] = field(default_factory=dict)


class Health:
    """`heals`: a supervisor acts on outages (the embedded tritonserver); without one, a model marked down
    after a failed call counts as up again when a call through it succeeds."""

    def __init__(self, heals: bool = False) -> None:
        self.heals = heals
        self._lock = threading.Lock()
        self._server: Outage | None = None
        self._models: dict[str, Outage] = {}
        self._heal_requests: dict[str, str] = {}
        # Since when the server, and each model brought back, are known to be healthy: a call made before
        # that and failing after it tells nothing about them now.
        self._server_up_since = float("-inf")
        self._model_up_since: dict[str, float] = {}
        self._counters = HealthCounters()
        # Set when a failed call asks for healing, so the supervisor acts at once instead of at its next poll.
        self.wake = threading.Event()

    # --- reported by the supervisor -------------------------------------------------------------------

    def server_down(self, reason: str, action: str) -> None:
        with self._lock:
            if self._server is None:
                self._counters.outages[SERVER] = self._counters.outages.get(SERVER, 0) + 1
                self._server = Outage(reason, action)
            else:  # the same outage, told anew (a failed restart attempt): it keeps its start
                self._server = Outage(reason, action, self._server.since)

    def server_up(self, restarted: bool) -> None:
        """A (new) tritonserver is ready: its models are all fresh."""
        with self._lock:
            if restarted:
                self._counters.restarts += 1
            self._end(SERVER, self._server)
            self._server = None
            self._server_up_since = time.monotonic()
            for model, outage in self._models.items():
                self._end(model, outage)
            self._models.clear()
            self._heal_requests.clear()

    def model_down(self, model: str, reason: str, action: str) -> None:
        with self._lock:
            self._model_down(model, reason, action)

    def model_up(self, model: str, reloaded: bool = False) -> None:
        with self._lock:
            if reloaded:
                self._counters.reloads[model] = self._counters.reloads.get(model, 0) + 1
            self._end(model, self._models.pop(model, None))
            self._model_up_since[model] = time.monotonic()
            self._heal_requests.pop(model, None)  # made by calls older than this recovery

    def take_heal_requests(self) -> dict[str, str]:
        """Models that failed calls asked to heal: model -> reason."""
        with self._lock:
            requests, self._heal_requests = self._heal_requests, {}
            return requests

    # --- reported by the front ------------------------------------------------------------------------

    def call_failed(self, model: str, reason: str, issued: float) -> None:
        """A call made at `issued` (time.monotonic) failed because `model` is broken (its stub is dead).

        The time the call was made, not the time it failed, tells whether it says anything new: a call
        queued in Triton before a reload can fail well after the reload has healed the model."""
        with self._lock:
            if issued < max(self._server_up_since, self._model_up_since.get(model, float("-inf"))):
                return
            if model not in self._models:  # an outage already known keeps its (more precise) reason
                self._model_down(model, reason, f"reloading model {model!r}" if self.heals else "")
            if self.heals:
                self._heal_requests[model] = reason
        if self.heals:
            self.wake.set()

    def call_succeeded(self, models: Iterable[str]) -> None:
        """A call went through `models`: none of them is down any longer (only trusted without a
        supervisor, which says itself when a model is back)."""
        if self.heals or not self._models:
            return
        with self._lock:
            for model in models:
                if model in self._models:
                    self._end(model, self._models.pop(model))
                    self._model_up_since[model] = time.monotonic()

    # --- read by the front ----------------------------------------------------------------------------

    def server_outage(self) -> Outage | None:
        return self._server

    def problem(self, models: Iterable[str]) -> str | None:
        """Why the server or any of `models` is down, or None."""
        with self._lock:
            if self._server is not None:
                return f"{SERVER} is down: {self._server.describe()}"
            down = [f"model {model!r} is down: {self._models[model].describe()}"
                    for model in models if model in self._models]
        return "; ".join(down) or None

    def counters(self) -> HealthCounters:
        """A copy; ongoing outages count their time so far."""
        now = time.monotonic()
        with self._lock:
            seconds = dict(self._counters.outage_seconds)
            ongoing = [(SERVER, self._server)] if self._server else []
            for component, outage in [*ongoing, *self._models.items()]:
                seconds[component] = seconds.get(component, 0.0) + now - outage.since
            return HealthCounters(self._counters.restarts, dict(self._counters.reloads),
                                  dict(self._counters.outages), seconds)

    # --- under the lock -------------------------------------------------------------------------------

    def _model_down(self, model: str, reason: str, action: str) -> None:
        previous = self._models.get(model)
        if previous is None:
            self._counters.outages[model] = self._counters.outages.get(model, 0) + 1
        self._models[model] = Outage(reason, action, previous.since if previous else time.monotonic())

    def _end(self, component: str, outage: Outage | None) -> None:
        if outage is not None:
            seconds = self._counters.outage_seconds
            seconds[component] = seconds.get(component, 0.0) + time.monotonic() - outage.since
