"""The training loop's progress: a bar on a terminal, plain lines anywhere else.

A tqdm bar redraws itself with carriage returns, which a log file, a pipe or a CI log keeps as
one garbled line per frame; there, a plain line is logged every twentieth of the run instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

logger = logging.getLogger(__name__)
LINES_PER_RUN = 20  # plain lines, when the output is not a terminal


class Progress:
    """Wraps the loop's iterations; `update` every `every` iterations with the loss and speed."""

    def __init__(self, iterations: range, every: int, enabled: bool, stream: TextIO | None = None):
        stream = stream or sys.stderr
        self.enabled = enabled
        self.terminal = enabled and stream.isatty()
        self.total = iterations.stop - 1
        self.bar = tqdm(iterations, disable=not self.terminal, unit="it", dynamic_ncols=True, file=stream)
        # Updates between plain lines: about LINES_PER_RUN lines however long the run.
        self.updates_per_line = max(1, len(iterations) // (every * LINES_PER_RUN))
        self.updates = 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.bar)

    def update(self, iteration: int, loss: float, chars_per_s: float) -> None:
        if self.terminal:
            self.bar.set_postfix(loss=f"{loss:.4f}", chars_per_s=f"{chars_per_s:,.0f}")
        elif self.enabled and self.updates % self.updates_per_line == 0:
            logger.info("iter %d/%d: loss %.4f, %s characters/s", iteration, self.total, loss, f"{chars_per_s:,.0f}")
        self.updates += 1

    def close(self) -> None:
        self.bar.close()
