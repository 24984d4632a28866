"""A front end's side of the sequences it has queued: their characters as they arrive, and when
their HTTP responses write.

An engine client hands each step message's characters to the sequences they belong to
(`SequenceStream.add`, a reference into the message's arrays, no copy) and tells their
`Submission`, the sequences of one HTTP request. Its writer (the route's response) waits for a
wake-up, takes everything pending in one piece and writes it. Wake-ups are paced by the front
end's `Pacer`: a stream's first characters go out at once, and a stream that wrote recently waits
until its turn comes again, so that under load each write carries several characters while an
idle server writes each character as it comes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import AsyncIterator, Callable

import numpy as np

from service.engine.events import StepEvents
from service.engine.sequences import Finished

Chunk = tuple[StepEvents, int, int]  # a message's events, the first character and how many


class SequenceStream:
    """One sequence's characters and end, as they arrive from its engine."""

    __slots__ = ("chunks", "end", "index", "key", "owner", "pending", "released", "reported", "submitted_at")

    def __init__(self, owner: Submission, index: int):
        self.owner = owner
        self.index = index  # within its submission
        self.key = -1  # its name in its engine's messages, once submitted
        # Its request's time.monotonic(), once submitted: an end the front end writes itself (its
        # engine died) measures from it, as the engine's own ends do.
        self.submitted_at = 0.0
        self.chunks: list[Chunk] = []  # not yet taken by the writer
        self.pending = 0  # characters in chunks
        self.released = 0  # characters taken before them (the next one's position is released + 1)
        self.end: Finished | None = None
        self.reported = False  # its end was handed to the writer

    @property
    def news(self) -> bool:
        return bool(self.chunks) or (self.end is not None and not self.reported)

    def add(self, events: StepEvents, first: int, count: int) -> None:
        self.chunks.append((events, first, count))
        self.pending += count
        self.owner.fresh = True
        self.owner.notify(self)

    def finish(self, end: Finished) -> None:
        self.end = end
        self.owner.fresh = True
        self.owner.finished(self)

    def take(self) -> tuple[list[Chunk], int]:
        """The pending chunks, and the position before the first of them. A stream interval of k
        takes whole multiples of k characters (the rest waits), but everything once it has ended."""
        interval = self.owner.interval
        count = self.pending
        if interval > 1 and self.end is None:
            count -= count % interval
        chunks, before = self.chunks, self.released
        if count < self.pending:
            chunks, self.chunks = split(chunks, count)
        else:
            self.chunks = []
        self.released, self.pending = self.released + count, self.pending - count
        return chunks, before


def split(chunks: list[Chunk], count: int) -> tuple[list[Chunk], list[Chunk]]:
    """The first `count` characters of `chunks`, and the rest."""
    head: list[Chunk] = []
    for i, (events, first, n) in enumerate(chunks):
        if count >= n:
            head.append((events, first, n))
            count -= n
            continue
        if count:
            head.append((events, first, count))
        return head, [(events, first + count, n - count), *chunks[i + 1 :]]
    return head, []


def chunk_ids(chunks: list[Chunk]) -> np.ndarray:
    """The character ids of `chunks`, in order."""
    if not chunks:
        return np.zeros(0, np.int32)
    if len(chunks) == 1:
        events, first, count = chunks[0]
        return events.ids[first : first + count]
    return np.concatenate([events.ids[first : first + count] for events, first, count in chunks])


class Submission:
    """The sequences of one HTTP request, and the one writer that waits for their news.

    `interval`: the writer wakes once this many characters are pending (1: each as it comes);
    0 wakes it only when every sequence has ended (an answer that is not streamed).
    """

    def __init__(self, count: int, interval: int, pacer: Pacer, on_cancel: Callable[[list[int]], None]):
        self.sequences = [SequenceStream(self, i) for i in range(count)]
        self.interval = interval
        self.pacer = pacer
        self.on_cancel = on_cancel  # the keys of the sequences to cancel, to their engine
        self.unfinished = count
        self.waiter: asyncio.Future[None] | None = None
        self.last_write = -math.inf
        self.gone = False  # the client disconnected
        self.keepalive = False  # woken to keep a quiet stream alive
        self.deferred = False  # its wake-up waits for the pacer
        self.fresh = False  # something arrived since the writer last wrote
        self.cancelled: set[int] = set()  # keys whose cancellation was sent

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.sequences)

    def notify(self, sequence: SequenceStream) -> None:
        """Characters arrived: wake the writer if they are enough, when the pacer allows."""
        if self.waiter is None or self.deferred or self.waiter.done() or self.interval == 0:
            return
        if self.interval > 1 and self.pending < self.interval:
            return
        self.pacer.schedule(self)

    def finished(self, sequence: SequenceStream) -> None:
        self.unfinished -= 1
        if self.interval or not self.unfinished:
            self.wake()  # an end goes out at once

    def wake(self) -> None:
        self.deferred = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def client_gone(self) -> None:
        self.gone = True
        self.cancel()
        self.wake()

    def cancel(self) -> None:
        """Cancel every sequence that has not ended (each still ends, cancelled, within a step);
        once: asking again sends nothing."""
        keys = [s.key for s in self.sequences if s.end is None and s.key >= 0 and s.key not in self.cancelled]
        if keys:
            self.cancelled.update(keys)
            self.on_cancel(keys)

    async def updates(self) -> AsyncIterator[list[SequenceStream] | None]:
        """Until every sequence's end is delivered: the sequences with news (their chunks are the
        caller's to take; an end is reported once), each time the writer may write; None when a
        quiet stream needs a keep-alive. Leaving early, or the client going away, cancels what
        still runs."""
        self.pacer.opened(self)
        try:
            while not all(s.reported for s in self.sequences):
                ready = [s for s in self.sequences if s.news]
                if self.fresh and (self._ends(ready) or (self._enough() and self.pacer.turn(self))):
                    self.fresh = False
                    yield ready
                    self.last_write = self.pacer.now()
                    for sequence in ready:
                        sequence.reported = sequence.end is not None
                    continue
                self.waiter = asyncio.get_running_loop().create_future()
                if self.fresh and self._enough():  # characters wait for this stream's turn
                    self.pacer.schedule(self)
                await self.waiter
                self.waiter = None
                if self.gone:
                    return
                if self.keepalive:
                    self.keepalive = False
                    self.last_write = self.pacer.now()
                    yield None
        finally:
            self.pacer.closed(self)
            if self.unfinished:
                self.cancel()

    def _ends(self, ready: list[SequenceStream]) -> bool:
        """Whether an end is due: at once when streaming, when all have ended otherwise."""
        ending = any(s.end is not None and not s.reported for s in ready)
        return ending and (self.interval > 0 or not self.unfinished)

    def _enough(self) -> bool:
        return self.interval > 0 and self.pending >= self.interval


class Pacer:
    """When the writers of one front end's streams may write: with S streams open, a stream writes
    at most once every S / writes_per_s seconds; characters that arrive meanwhile wait for that
    write. A stream that has not written for that long writes at once. Also wakes quiet streams for
    a keep-alive every `keepalive_s`."""

    def __init__(self, writes_per_s: float, keepalive_s: float):
        self.writes_per_s = writes_per_s
        self.keepalive_s = keepalive_s
        self.open: set[Submission] = set()
        self.deferred: list[tuple[float, int, Submission]] = []  # (due, tie-breaker, submission)
        self.counter = itertools.count()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf  # when the timer fires
        self.sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def opened(self, submission: Submission) -> None:
        self.loop = self.loop or asyncio.get_running_loop()
        if submission.interval:
            self.open.add(submission)
            if self.sweeper is None:
                self.sweeper = self.loop.call_later(self.keepalive_s / 2, self._sweep)

    def closed(self, submission: Submission) -> None:
        self.open.discard(submission)

    def turn(self, submission: Submission) -> bool:
        """Whether `submission` may write now."""
        return submission.last_write + len(self.open) / self.writes_per_s <= self.now()

    def schedule(self, submission: Submission) -> None:
        """Wake `submission`'s writer at its turn (now, if it has come)."""
        assert self.loop is not None
        due = submission.last_write + len(self.open) / self.writes_per_s
        if due <= self.loop.time():
            submission.wake()
            return
        submission.deferred = True
        heapq.heappush(self.deferred, (due, next(self.counter), submission))
        if self.timer is None or self.timer_at > due:
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = self.loop.call_at(due, self._tick), due

    def _tick(self) -> None:
        assert self.loop is not None
        self.timer, self.timer_at = None, math.inf
        now = self.loop.time()
        while self.deferred and self.deferred[0][0] <= now + 0.0005:
            heapq.heappop(self.deferred)[2].wake()
        if self.deferred:
            self.timer_at = self.deferred[0][0]
            self.timer = self.loop.call_at(self.timer_at, self._tick)

    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        for submission in self.open:
            if now - submission.last_write >= self.keepalive_s and submission.waiter is not None:
                submission.keepalive = True
                submission.wake()
        self.sweeper = self.loop.call_later(self.keepalive_s / 2, self._sweep) if self.open else None
