"""Continuous batching: one engine per model, one thread stepping every active sequence.

Requests wait in a bounded queue and join the running batch at the next step,
their prompt prefilled in one `step` call. Each step samples one character for
every active sequence, hands the characters that are safe to show to each
request's callback, and retires finished sequences at once. The model runs in
the engine's own thread, so the HTTP event loop stays free while it computes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import torch
from torch import Tensor

from charlm.models import CharModel, DecodeState
from charlm.sampling import SamplingBatch, sample
from charlm.vocab import Vocab
from service.sequences import Alternative, EngineMetrics, GenerationRequest, Row
from service.stopping import FinishReason

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The engine cannot queue these requests: its queue is at max_queued."""


class EngineClosed(Exception):
    """The engine no longer takes requests (the server is shutting down)."""


class Engine:
    """The batch of one model. `submit_all` and `cancel_all` may be called from any thread."""

    def __init__(
        self, name: str, model: CharModel, vocab: Vocab, max_batch_size: int, max_queued: int,
        metrics: EngineMetrics | None = None,
    ):
        self.name = name
        self.model = model
        self.vocab = vocab
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued  # waiting requests beyond the free rows of the batch
        self.metrics = metrics or EngineMetrics()
        self.max_batch_seen = 0  # largest batch stepped together, for tests and benchmarks
        self._cv = threading.Condition()
        self._waiting: collections.deque[GenerationRequest] = collections.deque()
        self._open = True
        self._warm = threading.Event()
        self._warm_error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        # The batch, touched only by the engine thread: rows, their state and next-character logits.
        self._rows: list[Row] = []
        self._state: DecodeState | None = None
        self._logits: Tensor | None = None  # (B, V)
        self._sampling: SamplingBatch | None = None

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        """Start the engine thread; returns once it has run its warm-up batch, or raises
        EngineClosed with the reason when the warm-up failed."""
        self._thread.start()
        self._warm.wait()
        if self._warm_error is not None:
            raise EngineClosed(f"warm-up at batch size {self.max_batch_size} failed: {self._warm_error}")

    def submit(self, request: GenerationRequest) -> None:
        self.submit_all([request])

    def submit_all(self, requests: list[GenerationRequest]) -> None:
        """Queue all the requests or none: raises QueueFull or EngineClosed instead of waiting."""
        with self._cv:
            if not self._open:
                raise EngineClosed(f"model {self.name} is shutting down")
            room = self.max_queued + max(0, self.max_batch_size - len(self._rows))
            if len(self._waiting) + len(requests) > room:
                raise QueueFull(f"model {self.name} has {len(self._waiting)} requests waiting")
            self._waiting.extend(requests)
            self._cv.notify()
            self.metrics.batch_changed(len(self._rows), len(self._waiting))

    def close(self) -> None:
        """Take no new requests and cancel the queued ones; active sequences run on."""
        with self._cv:
            self._open = False
            self._cv.notify()

    def cancel_all(self) -> None:
        """Cancel every queued and active request; each ends within one step."""
        with self._cv:
            for request in [*self._waiting, *(row.request for row in list(self._rows))]:
                request.cancel()
            self._cv.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after close); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _warm_up(self, steps: int = 3) -> None:
        """One batch at the maximum size, so the first requests meet no one-time costs.

        It runs in the engine thread: on a CPU, the thread that computes owns its OpenMP
        team, and teams of threads that never compute again would only compete for cores.
        """
        try:
            tokens = torch.full((self.max_batch_size, 1), self.vocab.start_id, device=self.device)
            logits, state = self.model.step(tokens)
            for _ in range(steps):
                logits, state = self.model.step(logits.argmax(dim=-1, keepdim=True), state)
        except Exception as exc:
            self._warm_error = exc
            self.close()
        finally:
            self._warm.set()

    def _run(self) -> None:
        with torch.inference_mode():
            self._warm_up()
            while (admitted := self._next_admissions()) is not None:
                try:
                    self._admit(admitted)
                    if self._rows:
                        self._step()
                except Exception as exc:  # a failed step must not kill the engine
                    logger.exception("engine %s: step failed", self.name)
                    self._retire_all(FinishReason.ERROR, f"generation failed: {exc}")
        self._retire_all(FinishReason.CANCELLED)

    def _next_admissions(self) -> list[GenerationRequest] | None:
        """Wait for work; the requests that join now, or None when the engine should stop."""
        with self._cv:
            while not self._rows and not self._waiting:
                if not self._open:
                    return None
                self._cv.wait()
            now = time.monotonic()
            waiting_before = len(self._waiting)
            for request in list(self._waiting):
                reason = FinishReason.CANCELLED if not self._open else request.ended_early(now)
                if reason is not None:  # cancelled, timed out, or shutting down: never starts
                    self._waiting.remove(request)
                    self._finish_unstarted(request, reason)
            room = self.max_batch_size - len(self._rows)
            admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            if len(self._waiting) != waiting_before:  # the gauges change only when the queue does
                self.metrics.batch_changed(len(self._rows), len(self._waiting))
        return admitted

    def _admit(self, requests: list[GenerationRequest]) -> None:
        """Prefill each new request's prompt and add it to the batch."""
        states, logits = [], []
        for request in requests:
            now = time.monotonic()
            row = Row(request, self.vocab, now)
            if request.max_new_tokens == 0:
                row.finish(FinishReason.LENGTH, now)
                row.deliver()
                continue
            try:
                prompt = torch.tensor([request.prompt_ids], device=self.device)  # (1, T)
                row_logits, row_state = self.model.step(prompt)
            except Exception as exc:  # this request's failure; the batch goes on
                logger.exception("engine %s: prefill failed", self.name)
                row.finish(FinishReason.ERROR, now, f"prefill failed: {exc}")
                row.deliver()
                continue
            self._rows.append(row)
            states.append(row_state)
            logits.append(row_logits)
        if states:
            previous = [] if self._state is None else [self._state]
            self._state = type(states[0]).concat(previous + states)
            self._logits = torch.cat(([] if self._logits is None else [self._logits]) + logits)
            self._batch_changed()

    def _step(self) -> None:
        """Sample one character for every row, retire finished rows, advance the rest."""
        now = time.monotonic()
        ended = {i: reason for i, row in enumerate(self._rows) if (reason := row.request.ended_early(now))}
        if ended:
            self._retire(ended, now)
            if not self._rows:
                return
        assert self._logits is not None and self._sampling is not None and self._state is not None
        ids, logprobs = sample(self._logits, self._sampling, [row.generator for row in self._rows])
        tops = self._top_alternatives()
        now = time.monotonic()
        finished = {}
        samples = zip(self._rows, ids.tolist(), logprobs.tolist(), tops, strict=True)  # one device sync
        for i, (row, char_id, logprob, top) in enumerate(samples):
            reason = row.advance(char_id, logprob, top, now, self.metrics)
            if reason is not None:
                finished[i] = reason
        self.metrics.chars(len(self._rows))
        self.max_batch_seen = max(self.max_batch_seen, len(self._rows))
        next_ids = ids[[i for i in range(len(self._rows)) if i not in finished]][:, None]  # (B', 1)
        self._retire(finished, now)  # delivers every row's events, finished or not
        if self._rows:
            self._logits, self._state = self.model.step(next_ids, self._state)

    def _top_alternatives(self) -> list[tuple[Alternative, ...]]:
        """Each row's top_n most likely next characters, computed only when some row asks."""
        wanted = [row.request.top_n for row in self._rows]
        if not any(wanted):
            return [()] * len(wanted)
        assert self._logits is not None
        k = min(max(wanted), len(self.vocab))
        logprobs, ids = self._logits.float().log_softmax(dim=-1).topk(k, dim=-1)  # (B, k)
        chars = self.vocab.chars
        return [
            tuple(Alternative(i, chars[i], lp) for i, lp in zip(row_ids[:n], row_lps[:n], strict=True))
            for n, row_ids, row_lps in zip(wanted, ids.tolist(), logprobs.tolist(), strict=True)
        ]

    def _retire(self, reasons: dict[int, FinishReason], now: float) -> None:
        """Finish the rows at these indices, deliver every row's events, drop the finished rows."""
        for i, reason in reasons.items():
            if reason is FinishReason.CANCELLED:
                self.metrics.cancelled()
            self._rows[i].finish(reason, now)
        for row in self._rows:
            row.deliver()
        if not reasons:
            return
        keep = [i for i in range(len(self._rows)) if i not in reasons]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._state = self._logits = None
        else:
            rows = torch.tensor(keep, device=self.device)
            assert self._state is not None and self._logits is not None
            self._state = self._state.select(rows)
            self._logits = self._logits.index_select(0, rows)
        self._batch_changed()

    def _retire_all(self, reason: FinishReason, error: str | None = None) -> None:
        now = time.monotonic()
        for row in self._rows:
            row.finish(reason, now, error)
            row.deliver()
        self._rows, self._state, self._logits = [], None, None
        self._batch_changed()

    def _finish_unstarted(self, request: GenerationRequest, reason: FinishReason) -> None:
        if reason is FinishReason.CANCELLED:
            self.metrics.cancelled()
        now = time.monotonic()
        row = Row(request, self.vocab, now)
        row.finish(reason, now)
        row.deliver()

    def _batch_changed(self) -> None:
        self._sampling = SamplingBatch.of([row.request.params for row in self._rows], self.device)
        self.metrics.batch_changed(len(self._rows), len(self._waiting))
