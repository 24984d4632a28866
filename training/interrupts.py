"""Stopping a run between steps when asked: Ctrl-C, or SIGTERM (a job cancelled or paused, a
container stopped)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event, enabled: bool = True) -> Iterator[None]:
    """Ctrl-C or SIGTERM sets `stop`, which the loop reads between iterations, rather than raising
    wherever the process happens to be (inside a lock, half through a checkpoint); a second signal
    raises at once. Not under torchrun (`enabled` False), where every rank must stop at the same
    iteration, nor outside the main thread, where no signal handler can be set."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logger.warning("%s: stopping after this iteration (again to stop at once)", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
