"""Prometheus metrics, one registry per app so several apps (tests) never collide.

An engine reports through `EngineMetrics`. In the server's process it writes to Prometheus
directly (`PrometheusEngineMetrics`); in an engine process it counts into a `MetricsSnapshot`
that travels with the events and is applied here, so that nothing is observed per character
across processes.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from service.engine.sequences import EngineMetrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CountedHistogram(Collector):
    """A histogram by label that also takes counts already sorted into its buckets, so that an
    engine process can report a step's worth of observations at once."""

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry):
        self.name, self.documentation, self.label = name, documentation, label
        self.lock = threading.Lock()
        self.counts: dict[str, list[int]] = {}  # per label value: one count per bucket, then +Inf
        self.sums: dict[str, float] = {}
        registry.register(self)

    def add(self, value: str, counts: list[int], total: float) -> None:
        with self.lock:
            mine = self.counts.setdefault(value, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, count in enumerate(counts):
                mine[i] += count
            self.sums[value] = self.sums.get(value, 0.0) + total

    def observe(self, value: str, seconds: float) -> None:
        counts = [0] * (len(LATENCY_BUCKETS) + 1)
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] = 1
        self.add(value, counts, seconds)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self.lock:
            for value, counts in self.counts.items():
                cumulative, buckets = 0, []
                for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                family.add_metric([value], buckets, self.sums[value])
        yield family


@dataclasses.dataclass
class MetricsSnapshot:
    """What an engine counted since the last snapshot (picklable: it crosses processes)."""

    active: int = 0
    queued: int = 0
    first_chars: list[float] = dataclasses.field(default_factory=list)
    inter_counts: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    inter_sum: float = 0.0
    chars: int = 0
    cancelled: int = 0


class RecordingMetrics(EngineMetrics):
    """Counts an engine's reports into snapshots; `take` hands over what was counted."""

    def __init__(self) -> None:
        self.snapshot = MetricsSnapshot()

    def batch_changed(self, active: int, queued: int) -> None:
        self.snapshot.active, self.snapshot.queued = active, queued

    def first_char(self, seconds: float) -> None:
        self.snapshot.first_chars.append(seconds)

    def inter_char(self, seconds: float) -> None:
        self.snapshot.inter_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.snapshot.inter_sum += seconds

    def chars(self, count: int) -> None:
        self.snapshot.chars += count

    def cancelled(self) -> None:
        self.snapshot.cancelled += 1

    def take(self) -> MetricsSnapshot:
        taken = self.snapshot
        self.snapshot = MetricsSnapshot(active=taken.active, queued=taken.queued)
        return taken


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
        self.inter_char = CountedHistogram("charlm_inter_char_seconds", "time between consecutive characters",
                                           "model", r)
        self.chars = Counter("charlm_chars_generated", "characters generated", ["model"], registry=r)
        self.cancelled = Counter("charlm_requests_cancelled", "requests cancelled: client gone, or shutdown",
                                 ["model"], registry=r)
        self.models_loaded = Gauge("charlm_models_loaded", "models ready to serve", registry=r)
        self.model_reloads = Counter("charlm_model_reloads", "model versions loaded after startup: new "
                                     "directories and replaced weights", ["model"], registry=r)
        self.model_load_failures = Counter("charlm_model_load_failures", "model directories that failed to "
                                           "load or start, at startup or later", ["model"], registry=r)

    def for_model(self, model: str) -> EngineMetrics:
        return PrometheusEngineMetrics(self, model)

    def apply(self, model: str, snapshot: MetricsSnapshot) -> None:
        """What an engine process counted, into Prometheus."""
        self.batch_size.labels(model).set(snapshot.active)
        self.queue_depth.labels(model).set(snapshot.queued)
        first = self.first_char.labels(model)
        for seconds in snapshot.first_chars:
            first.observe(seconds)
        if any(snapshot.inter_counts):
            self.inter_char.add(model, snapshot.inter_counts, snapshot.inter_sum)
        if snapshot.chars:
            self.chars.labels(model).inc(snapshot.chars)
        if snapshot.cancelled:
            self.cancelled.labels(model).inc(snapshot.cancelled)


class PrometheusEngineMetrics(EngineMetrics):
    def __init__(self, metrics: ServiceMetrics, model: str):
        self._model = model
        self._queue = metrics.queue_depth.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._first = metrics.first_char.labels(model)
        self._inter = metrics.inter_char
        self._chars = metrics.chars.labels(model)
        self._cancelled = metrics.cancelled.labels(model)

    def batch_changed(self, active: int, queued: int) -> None:
        self._batch.set(active)
        self._queue.set(queued)

    def first_char(self, seconds: float) -> None:
        self._first.observe(seconds)

    def inter_char(self, seconds: float) -> None:
        self._inter.observe(self._model, seconds)

    def chars(self, count: int) -> None:
        self._chars.inc(count)

    def cancelled(self) -> None:
        self._cancelled.inc()
