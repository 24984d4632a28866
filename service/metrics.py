"""Prometheus metrics, one registry per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.sequences import EngineMetrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("charlm_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.queue_depth = Gauge("charlm_queue_depth", "requests waiting to join the batch", ["model"],
                                 registry=r)
        self.batch_size = Gauge("charlm_batch_size", "sequences in the running batch", ["model"], registry=r)
        self.first_char = Histogram("charlm_time_to_first_char_seconds", "submission to first character",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_char = Histogram("charlm_inter_char_seconds", "time between consecutive characters",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.chars = Counter("charlm_chars_generated", "characters generated", ["model"], registry=r)
        self.cancelled = Counter("charlm_requests_cancelled", "requests cancelled: client gone, or shutdown",
                                 ["model"], registry=r)

    def for_model(self, model: str) -> EngineMetrics:
        return PrometheusEngineMetrics(self, model)


class PrometheusEngineMetrics(EngineMetrics):
    def __init__(self, metrics: ServiceMetrics, model: str):
        self._queue = metrics.queue_depth.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._first = metrics.first_char.labels(model)
        self._inter = metrics.inter_char.labels(model)
        self._chars = metrics.chars.labels(model)
        self._cancelled = metrics.cancelled.labels(model)

    def batch_changed(self, active: int, queued: int) -> None:
        self._batch.set(active)
        self._queue.set(queued)

    def first_char(self, seconds: float) -> None:
        self._first.observe(seconds)

    def inter_char(self, seconds: float) -> None:
        self._inter.observe(seconds)

    def chars(self, count: int) -> None:
        self._chars.inc(count)

    def cancelled(self) -> None:
        self._cancelled.inc()
