"""Prometheus metrics of one serving instance (own registry: several apps can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str, int], tuple] = {}
        r = self.registry
        self.requests = Counter(
            "hdc_serving_requests",
            "HTTP requests answered",
            ["model", "endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "hdc_serving_request_duration_seconds",
            "Time from request received to answer sent",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "hdc_serving_errors",
            "Requests answered with an error",
            ["model", "endpoint", "kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "hdc_serving_queue_depth", "Predictions waiting for a worker", registry=r
        )
        self.workers = Gauge(
            "hdc_serving_workers_ready", "Predict worker processes ready", registry=r
        )
        self.batch_size = Histogram(
            "hdc_serving_batch_size",
            "Requests sent to a worker in one message",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.training_started = Counter(
            "hdc_serving_training_jobs_started", "Training jobs started", ["model"], registry=r
        )

    def observe(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        # labels() costs a lock and a dict lookup per call; the children never change.
        key = (model, endpoint, code)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(model, endpoint, str(code)),
                self.latency.labels(model, endpoint),
                self.errors.labels(model, endpoint, "client" if code < 500 else "server")
                if code >= 400
                else None,
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def count_jobs_with(self, counter: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """Job counts come from the database at scrape time: true across restarts and replicas."""
        self.registry.register(_JobsCollector(counter))


class _JobsCollector(Collector):
    def __init__(self, counter: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._counter = counter

    def describe(self):  # type: ignore[override]
        # Without this, registering would call collect() and query the database right away.
        return []

    def collect(self):  # type: ignore[override]
        family = GaugeMetricFamily(
            "hdc_serving_training_jobs",
            "Training jobs by model and status",
            labels=["model", "status"],
        )
        for model, status, n in self._counter():
            family.add_metric([model, status], n)
        yield family
