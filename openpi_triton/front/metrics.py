"""Prometheus metrics of the front (GET /metrics); Triton exports its own on its metrics port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class FrontMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "openpi_triton_requests", "Websocket requests by policy, endpoint and outcome",
            ["policy", "endpoint", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "openpi_triton_request_seconds", "Time from a frame's arrival to its answer",
            ["policy"], registry=self.registry,
            buckets=(0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.connections = Gauge(
            "openpi_triton_connections", "Open robot connections", ["policy"], registry=self.registry,
        )
        self.rejected = Counter(
            "openpi_triton_rejected_connections", "Connections refused at the handshake", ["reason"],
            registry=self.registry,
        )
