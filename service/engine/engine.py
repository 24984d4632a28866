"""Continuous batching: one engine per model, one thread stepping every active sequence.

Requests wait in a bounded queue and join the running batch at the next step,
their prompt prefilled into a free row of the model's fixed-size decode state.
Each step samples one character for every active sequence, retires finished
sequences at once (`service.engine.batch`), and hands everything the turn released,
for all sequences together, to the engine's sink (`service.engine.events`). The
model runs in the engine's own thread, so whoever submits never waits on it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from pathlib import Path

import torch

from charlm.decoding import SlotDecoder
from charlm.device_memory import DecoderMemoryError
from charlm.dtype_choice import choose_dtype, convert
from charlm.models import CharModel
from charlm.vocab import Vocab
from service.engine.batch import RunningBatch
from service.engine.events import CallbackSink, EventSink, StepEventsBuilder
from service.engine.sequences import EngineMetrics, GenerationRequest, Row
from service.engine.stopping import FinishReason

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The engine cannot queue these requests: its queue is at max_queued."""


class EngineClosed(Exception):
    """The engine no longer takes requests (the server is shutting down)."""


class Engine:
    """The batch of one model. `submit_all` and `cancel_all` may be called from any thread."""

    def __init__(
        self, name: str, model: CharModel, vocab: Vocab, max_batch_size: int, max_queued: int,
        metrics: EngineMetrics | None = None, cuda_graphs: bool = True, sink: EventSink | None = None,
        compile_step: bool | None = None, choose_dtype: bool = False, model_dir: Path | None = None,
    ):
        """`sink` receives what every turn of the engine's loop produced (from the engine thread);
        by default each request's `on_events` does. `compile_step`: torch.compile the decode step
        (None: on CUDA); `choose_dtype`: the model, given in float32, decodes in the faster dtype
        (`charlm.dtype_choice`), chosen at warm-up; `model_dir`, where the model came from, may
        carry its exported CPU step (`charlm.cpu_onnx`)."""
        self.name = name
        self.model = model
        self.vocab = vocab
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued  # waiting requests beyond the free rows of the batch
        self.metrics = metrics or EngineMetrics()
        self.cuda_graphs = cuda_graphs
        self.sink: EventSink = sink or CallbackSink(vocab.chars)
        self.out = StepEventsBuilder()
        self._keys = itertools.count()
        self.compile_step, self.choose_dtype = compile_step, choose_dtype
        self.model_dir = model_dir
        self._cv = threading.Condition()
        self._waiting: collections.deque[GenerationRequest] = collections.deque()
        self._admitting = 0  # taken from the queue, not yet in the batch (their prefill runs)
        self._rows_taken = 0  # the batch's rows once those being admitted are in (0: none are)
        self._open = True
        self._finish_queued = False  # closed to new requests, but runs the queued ones (a retired version)
        self._warm = threading.Event()
        self._warm_error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        # Made by the engine thread at start, then touched only by it.
        self._batch: RunningBatch | None = None
        self.memory: dict[str, object] = {}  # what the decode state takes, for /info
        self.failure: str | None = None  # an engine in a thread fails only at start (EngineClosed)
        # For the control plane's watch (`pulse`): when the decode step under way began (None outside
        # one), and when the engine last had work.
        self._step_started: float | None = None
        self._last_work = time.monotonic()

    @property
    def active(self) -> int:
        return len(self._batch.rows) if self._batch is not None else 0

    @property
    def max_batch_seen(self) -> int:
        """The largest batch stepped together, for tests and benchmarks."""
        return self._batch.max_batch_seen if self._batch is not None else 0

    @property
    def cuda_graphed(self) -> bool:
        return self._batch is not None and self._batch.decoder.graphed

    @property
    def queued(self) -> int:
        """Requests not yet in the batch, those whose prefill runs now included: a drain that
        waits for `active + queued` to reach 0 must never see a request between the two."""
        return len(self._waiting) + self._admitting

    def pulse(self) -> tuple[float, float, int]:
        """(seconds the decode step under way has run, 0 outside one; seconds since the engine last
        had work, 0 while it has; sequences it holds): how the control plane tells a hung engine from
        a busy one, and an idle one from both. One decode step adds one character to each row, which
        takes milliseconds; a prefill is not counted (a long prompt's may take seconds). Read from
        any thread."""
        now, step_started, load = time.monotonic(), self._step_started, self.active + self.queued
        step_s = now - step_started if step_started is not None else 0.0
        return step_s, 0.0 if load else now - self._last_work, load

    def start(self) -> None:
        """Start the engine thread; returns once it has run its warm-up batch, or raises
        EngineClosed with the reason when the warm-up failed."""
        self._thread.start()
        self._warm.wait()
        if isinstance(self._warm_error, DecoderMemoryError):
            raise EngineClosed(f"{self._warm_error} (CHARLM_MAX_BATCH_SIZE)")
        if self._warm_error is not None:
            raise EngineClosed(f"warm-up at batch size {self.max_batch_size} failed: {self._warm_error}")

    def submit(self, request: GenerationRequest) -> None:
        self.submit_all([request])

    def submit_all(self, requests: list[GenerationRequest]) -> None:
        """Queue all the requests or none: raises QueueFull or EngineClosed instead of waiting."""
        with self._cv:
            if not self._open:
                raise EngineClosed(f"model {self.name} is shutting down")
            taken = max(self.active, self._rows_taken)  # rows in use, or promised to requests in prefill
            room = self.max_queued + max(0, self.max_batch_size - taken)
            if len(self._waiting) + len(requests) > room:
                raise QueueFull(f"model {self.name} has {len(self._waiting)} requests waiting")
            for request in requests:
                if request.key < 0:
                    request.key = next(self._keys)
            self.sink.accepted(requests)
            self._waiting.extend(requests)
            self._cv.notify()
            self.metrics.batch_changed(self.active, len(self._waiting))

    def close(self, finish_queued: bool = False) -> None:
        """Take no new requests; active sequences run on, and queued ones are cancelled or, with
        `finish_queued` (a model version being replaced), run too."""
        with self._cv:
            self._open = False
            self._finish_queued = finish_queued
            self._cv.notify()

    def cancel_all(self) -> None:
        """Cancel every queued and active request; each ends within one step."""
        with self._cv:
            rows = list(self._batch.rows) if self._batch is not None else []
            for request in [*self._waiting, *(row.request for row in rows)]:
                request.cancel()
            self._cv.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after close); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _warm_up(self) -> None:
        """Allocate the decode state for max_batch_size rows and run every path once at that
        size (capturing the CUDA graphs), so the first requests meet no one-time costs.

        It runs in the engine thread: on a CPU, the thread that computes owns its OpenMP
        team, and teams of threads that never compute again would only compete for cores.
        """
        try:
            reserved = torch.cuda.memory_reserved(self.device) if self.device.type == "cuda" else 0
            chosen = choose_dtype(self.model, self.max_batch_size) if self.choose_dtype else None
            if chosen is not None:
                convert(self.model, chosen.dtype)
            decoder = SlotDecoder(self.model, self.max_batch_size, graphs=self.cuda_graphs, name=self.name,
                                  compile=self.compile_step, model_dir=self.model_dir)
            decoder.warm_up([self.vocab.start_id] * 8)
            self._batch = RunningBatch(decoder, self.vocab.chars, self.metrics, self.out, self._batch_changed)
            self.memory = {"decode_state_bytes": decoder.state_bytes, "cuda_graphs": decoder.graphed,
                           **decoder.report, **(chosen.describe() if chosen is not None else {})}
            if self.device.type == "cuda":
                self.memory["device_bytes"] = torch.cuda.memory_reserved(self.device) - reserved
        except Exception as exc:
            self._warm_error = exc
            self.close()
        finally:
            self._warm.set()

    def _run(self) -> None:
        with torch.inference_mode():
            self._warm_up()
            batch = self._batch
            while batch is not None and (admitted := self._next_admissions(batch)) is not None:
                self._last_work = time.monotonic()
                try:
                    try:
                        batch.admit(admitted)  # not timed for the pulse: a long prompt's prefill may take seconds
                    finally:
                        self._admitting = self._rows_taken = 0
                    self._step_started = time.monotonic()
                    batch.step()
                except Exception as exc:  # a failed step must not kill the engine
                    logger.exception("engine %s: step failed", self.name)
                    batch.retire_all(FinishReason.ERROR, f"generation failed: {exc}")
                self._step_started = None
                self._deliver()
                self._last_work = time.monotonic()
            if batch is not None:
                batch.retire_all(FinishReason.CANCELLED)
            self._deliver()

    def _deliver(self) -> None:
        """Everything this turn produced, to the sink (which may skip an empty turn)."""
        try:
            self.sink.deliver(self.out.take())
        except Exception:  # the sink's failure must not stop the engine
            logger.exception("engine %s: delivering a step's events failed", self.name)

    def _next_admissions(self, batch: RunningBatch) -> list[GenerationRequest] | None:
        """Wait for work; the requests that join now, or None when the engine should stop."""
        with self._cv:
            while not batch.busy and not self._waiting:
                if not self._open:
                    return None
                self._cv.wait()
            now = time.monotonic()
            waiting_before = len(self._waiting)
            for request in list(self._waiting):
                closing = not self._open and not self._finish_queued
                reason = FinishReason.CANCELLED if closing else request.ended_early(now)
                if reason is not None:  # cancelled, timed out, or shutting down: never starts
                    self._waiting.remove(request)
                    self._finish_unstarted(request, reason)
            room = self.max_batch_size - len(batch.rows)
            admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            self._admitting = len(admitted)
            self._rows_taken = len(batch.rows) + len(admitted)
            if len(self._waiting) != waiting_before:  # the gauges change only when the queue does
                self.metrics.batch_changed(self.active, len(self._waiting))
        return admitted

    def _finish_unstarted(self, request: GenerationRequest, reason: FinishReason) -> None:
        if reason is FinishReason.CANCELLED:
            self.metrics.cancelled()
        now = time.monotonic()
        self.out.finish(Row(request, now).finished(reason, now))

    def _batch_changed(self) -> None:
        self.metrics.batch_changed(self.active, len(self._waiting))
