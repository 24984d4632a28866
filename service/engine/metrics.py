"""What an engine in a process of its own counts between two messages to its front ends.

Nothing is observed per character across processes: the engine counts into a `MetricsSnapshot`,
which travels with its events and is applied to Prometheus on the front end's side
(`service.frontend.metrics`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from service.engine.sequences import EngineMetrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BOUNDS = np.array(LATENCY_BUCKETS)


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

    @property
    def counted(self) -> bool:
        """Whether it holds anything beyond the gauges."""
        return bool(self.first_chars or self.chars or self.cancelled or any(self.inter_counts))


def bucket_counts(seconds: list[float]) -> list[int]:
    """How many of `seconds` fall in each latency bucket (le), then +Inf."""
    index = np.searchsorted(BOUNDS, np.asarray(seconds), side="left")  # (n,) the first bound >= each
    return np.bincount(index, minlength=len(LATENCY_BUCKETS) + 1).tolist()


class RecordingMetrics(EngineMetrics):
    """Counts an engine's reports into snapshots; `take` hands over what was counted."""

    def __init__(self) -> None:
        self.snapshot = MetricsSnapshot()

    def batch_changed(self, active: int, queued: int) -> None:
        self.snapshot.active, self.snapshot.queued = active, queued

    def first_char(self, seconds: float) -> None:
        self.snapshot.first_chars.append(seconds)

    def inter_chars(self, seconds: list[float]) -> None:
        counts = bucket_counts(seconds)
        inter = self.snapshot.inter_counts
        for i, count in enumerate(counts):
            inter[i] += count
        self.snapshot.inter_sum += sum(seconds)

    def chars(self, count: int) -> None:
        self.snapshot.chars += count

    def cancelled(self) -> None:
        self.snapshot.cancelled += 1

    def take(self) -> MetricsSnapshot:
        taken = self.snapshot
        self.snapshot = MetricsSnapshot(active=taken.active, queued=taken.queued)
        return taken
