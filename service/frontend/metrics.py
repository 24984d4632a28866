"""Prometheus metrics, one registry per app so several apps (tests) never collide.

An engine reports through `EngineMetrics`. An engine in a thread of this process writes to
Prometheus directly (`PrometheusEngineMetrics`); an engine process counts into a `MetricsSnapshot`
that travels with its step messages and is applied here (`engine_counts`), so that nothing is
observed per character across processes. With several front ends (`charlm serve --workers N`),
each writes its values to files in one directory (Prometheus's multiprocess mode, set up by the
supervisor through PROMETHEUS_MULTIPROC_DIR), an engine sends what it counted to one front end
only, and whichever front end answers `/metrics` reports the totals of the whole server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.engine.metrics import LATENCY_BUCKETS, MetricsSnapshot, bucket_counts
from service.engine.sequences import EngineMetrics

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class ControlPlaneCounts(Collector):
    """Counts the control plane keeps (every front end knows the same ones): reported as they are,
    never summed over front ends."""

    def __init__(self, counts: Callable[[], tuple[dict[str, int], dict[str, int]]]):
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        reloads, failures = self.counts()
        for name, doc, values in (
            ("charlm_model_reloads", "model versions loaded after startup: new directories and replaced weights",
             reloads),
            ("charlm_model_load_failures", "model directories that failed to load or start, at startup or later",
             failures),
        ):
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, count in sorted(values.items()):
                family.add_metric([model], count)
            yield family


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = MULTIPROCESS_DIR in os.environ
        r = self.registry
        self.requests = Counter("charlm_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.queue_depth = Gauge("charlm_queue_depth", "requests waiting to join the batch", ["model"],
                                 registry=r, multiprocess_mode="mostrecent")
        self.batch_size = Gauge("charlm_batch_size", "sequences in the running batch", ["model"], registry=r,
                                multiprocess_mode="mostrecent")
        self.first_char = Histogram("charlm_time_to_first_char_seconds", "submission to first character",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_char = Histogram("charlm_inter_char_seconds", "time between consecutive characters", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.chars = Counter("charlm_chars_generated", "characters generated", ["model"], registry=r)
        self.cancelled = Counter("charlm_requests_cancelled", "requests cancelled: client gone, or shutdown",
                                 ["model"], registry=r)
        self.models_loaded = Gauge("charlm_models_loaded", "models ready to serve", registry=r,
                                   multiprocess_mode="mostrecent")
        self.gauges: dict[str, tuple[int, int]] = {}  # per model: (active, queued) last set

    def count_control_plane(self, counts: Callable[[], tuple[dict[str, int], dict[str, int]]]) -> None:
        self.control = ControlPlaneCounts(counts)
        self.registry.register(self.control)

    def exposition(self) -> bytes:
        """The Prometheus text of the whole server."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        if hasattr(self, "control"):
            merged.register(self.control)
        return generate_latest(merged)

    def for_model(self, model: str) -> EngineMetrics:
        return PrometheusEngineMetrics(self, model)

    def engine_counts(self, model: str, active: int, queued: int, snapshot: MetricsSnapshot | None) -> None:
        """An engine process's gauges, and what it counted, into Prometheus."""
        if self.gauges.get(model) != (active, queued):
            self.gauges[model] = (active, queued)
            self.batch_size.labels(model).set(active)
            self.queue_depth.labels(model).set(queued)
        if snapshot is None:
            return
        first = self.first_char.labels(model)
        for seconds in snapshot.first_chars:
            first.observe(seconds)
        if any(snapshot.inter_counts):
            add_bucket_counts(self.inter_char.labels(model), snapshot.inter_counts, snapshot.inter_sum)
        if snapshot.chars:
            self.chars.labels(model).inc(snapshot.chars)
        if snapshot.cancelled:
            self.cancelled.labels(model).inc(snapshot.cancelled)


def add_bucket_counts(histogram: Histogram, counts: list[int], total: float) -> None:
    """Observations already sorted into the histogram's buckets (one count per bucket, then +Inf),
    added at once. prometheus_client observes one value at a time; a step's worth of gaps between
    characters is hundreds of values, so this adds to its bucket values directly."""
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)


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

    def inter_chars(self, seconds: list[float]) -> None:
        add_bucket_counts(self._inter, bucket_counts(seconds), sum(seconds))

    def chars(self, count: int) -> None:
        self._chars.inc(count)

    def cancelled(self) -> None:
        self._cancelled.inc()
