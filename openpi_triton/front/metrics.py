"""Prometheus metrics of the front (GET /metrics); Triton exports its own on its metrics port."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from openpi_triton.triton.health import Health


class FrontMetrics:
    def __init__(self, health: Health | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "openpi_triton_requests", "Requests by policy, endpoint, outcome and protocol (openpi: websocket, "
            "gr00t: ZeroMQ)", ["policy", "endpoint", "outcome", "protocol"], registry=self.registry,
        )
        self.latency = Histogram(
            "openpi_triton_request_seconds", "Time from a frame's arrival to its answer",
            ["policy", "protocol"], registry=self.registry,
            buckets=(0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.connections = Gauge(
            "openpi_triton_connections", "Open robot connections (gr00t: clients heard from within the idle "
            "timeout and still connected)", ["policy", "protocol"], registry=self.registry,
        )
        self.in_flight = Gauge(
            "openpi_triton_in_flight_requests", "Frames received and not yet answered", registry=self.registry,
        )
        self.rejected = Counter(
            "openpi_triton_rejected_connections", "Connections refused at the handshake (gr00t: requests of a "
            "client refused for the connection limit)", ["reason"],
            registry=self.registry,
        )
        if health is not None:
            self.registry.register(HealthCollector(health))


class HealthCollector(Collector):
    """Restarts, reloads and outages of the backend, read from `Health` at each scrape."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[CounterMetricFamily]:
        counters = self.health.counters()
        yield CounterMetricFamily("openpi_triton_backend_restarts", "Restarts of the embedded tritonserver after "
                                  "it died or could not heal a model", value=counters.restarts)
        reloads = CounterMetricFamily("openpi_triton_model_reloads", "Reloads of a model whose python stub died",
                                      labels=["model"])
        for model, count in sorted(counters.reloads.items()):
            reloads.add_metric([model], count)
        yield reloads
        outages = CounterMetricFamily("openpi_triton_outages", "Outages of tritonserver or of one of its models",
                                      labels=["component"])
        seconds = CounterMetricFamily("openpi_triton_outage_seconds", "Time tritonserver or a model was down "
                                      "(ongoing outages included)", labels=["component"])
        for component, count in sorted(counters.outages.items()):
            outages.add_metric([component], count)
            seconds.add_metric([component], counters.outage_seconds.get(component, 0.0))
        yield outages
        yield seconds
