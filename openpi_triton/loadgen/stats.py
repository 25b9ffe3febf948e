"""Latency samples of one benchmark point and their summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in ms; NaN-free: an empty list gives zeros (the caller reports errors)."""
    if not latencies_ms:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    values = np.asarray(latencies_ms)
    p50, p90, p99 = np.percentile(values, PERCENTILES)
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(values.max()), "mean": float(values.mean())}


@dataclass
class PointResult:
    """One row at one fleet size: what the robots saw during the measurement window."""

    row: str
    robots: int
    duration_s: float
    requests: int = 0            # answered requests sent inside the window
    errors: int = 0
    deadline_misses: int = 0     # answered, but later than the deadline
    deadline_ms: float | None = None
    throughput: float = 0.0      # answers received inside the window, per second
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_ms: dict[str, float] = field(default_factory=dict)  # server-reported infer time, when it sends one
    overhead_ms: dict[str, float] = field(default_factory=dict)  # latency minus that: outside the model call
    client_cpu: float = 0.0      # CPU seconds of the load-generating process per wall second
    cpu_per_request_ms: dict[str, float] = field(default_factory=dict)  # process -> CPU ms per answered request
    error_messages: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    triton: dict[str, Any] = field(default_factory=dict)  # per-model statistics deltas

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.errors == 0

    @property
    def miss_rate(self) -> float:
        return self.deadline_misses / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latencies_ms"] = [round(x, 3) for x in self.latencies_ms]
        return data
