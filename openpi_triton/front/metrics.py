"""Prometheus metrics of the front (GET /metrics); Triton exports its own on its metrics port."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from openpi_triton.triton.backend import Replicas
from openpi_triton.triton.health import Health

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class FrontMetrics:
    def __init__(self, health: Health | None = None, replicas: Replicas | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "openpi_triton_requests", "Requests by policy, endpoint, outcome and protocol (openpi: websocket, "
            "gr00t: ZeroMQ)", ["policy", "endpoint", "outcome", "protocol"], registry=self.registry,
        )
        self.latency = Histogram(
            "openpi_triton_request_seconds", "Time from a frame's arrival to its answer",
            ["policy", "protocol"], registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.replica_requests = Counter(
            "openpi_triton_replica_requests", "Calls to each Triton replica by outcome (ok, or the error: "
            "unreachable, timeout, unavailable, rejected, sequence_lost, cancelled, error)",
            ["replica", "outcome"], registry=self.registry,
        )
        self.replica_latency = Histogram(
            "openpi_triton_replica_request_seconds", "Time of each successful call to a Triton replica",
            ["replica"], registry=self.registry, buckets=LATENCY_BUCKETS,
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
        self._replica_outcomes: dict[str, set[str]] = {}  # the labels of each replica's series
        if health is not None:
            self.registry.register(HealthCollector(health))
        if replicas is not None:
            self.registry.register(ReplicaCollector(replicas))

    def replica_call(self, replica: str, outcome: str, seconds: float) -> None:
        self.replica_requests.labels(replica, outcome).inc()
        self._replica_outcomes.setdefault(replica, set()).add(outcome)
        if outcome == "ok":
            self.replica_latency.labels(replica).observe(seconds)

    def forget_replica(self, replica: str) -> None:
        """A replica left the pool for good: its series go (pod churn must not grow the label sets forever)."""
        for outcome in self._replica_outcomes.pop(replica, ()):
            self.replica_requests.remove(replica, outcome)
            if outcome == "ok":
                self.replica_latency.remove(replica)


class ReplicaCollector(Collector):
    """Each current Triton replica's readiness and calls in flight, read from the pool at each scrape."""

    def __init__(self, pool: Replicas) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("openpi_triton_replica_up", "1 while a Triton replica is ready for calls",
                               labels=["replica"])
        in_flight = GaugeMetricFamily("openpi_triton_replica_in_flight_requests", "Calls in flight on each "
                                      "Triton replica (what routing balances)", labels=["replica"])
        for replica in self.pool.replicas():
            up.add_metric([replica.address], float(replica.ready))
            in_flight.add_metric([replica.address], replica.outstanding)
        yield up
        yield in_flight


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
