"""An engine in a process of its own: the server's side, with the API of `service.engine.engine.Engine`.

`submit_all` decides on 429 here, from the requests in flight, sends the requests down one pipe,
and a reader thread hands each sequence's events from the other pipe to its callback, as the
in-process engine would, and applies what the child's metrics counted. A cancellation travels as
a message; if the child dies, every sequence in flight ends with an error.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import threading
import time

from service.engine.engine import EngineClosed, QueueFull
from service.engine.process import EngineSpec, RequestSpec, run
from service.engine.sequences import Event, Finished, GenerationRequest
from service.engine.stopping import FinishReason
from service.frontend.metrics import ServiceMetrics

logger = logging.getLogger(__name__)


class EngineClient:
    def __init__(self, spec: EngineSpec, metrics: ServiceMetrics):
        """Starts the child at once, so that several models load in parallel; `start` waits for it."""
        self.name = spec.name
        self.max_batch_size = spec.max_batch_size
        self.max_queued = spec.max_queued
        self.metrics = metrics
        self.memory: dict[str, object] = {}
        self.max_batch_seen = 0
        self.failure: str | None = None  # why the child is gone, when it went unexpectedly
        self._lock = threading.Lock()  # the requests in flight
        self._send_lock = threading.Lock()
        self._open = True
        self._requests: dict[int, GenerationRequest] = {}
        self._ids = itertools.count()
        self._batch = (0, 0)  # (active, queued) as the child last counted them
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA
        commands_out, self._commands = context.Pipe(duplex=False)
        self._events, events_in = context.Pipe(duplex=False)
        self._process = context.Process(target=run, args=(spec, commands_out, events_in), daemon=True,
                                        name=f"engine-{spec.name}")
        self._process.start()
        commands_out.close()
        events_in.close()
        self._reader = threading.Thread(target=self._read, name=f"engine-client-{spec.name}", daemon=True)

    @property
    def active(self) -> int:
        return self._batch[0]

    @property
    def queued(self) -> int:
        """Requests in flight that the child does not run yet: ones on their way count too, so that a
        drain waiting for `active + queued` to reach 0 never misses one."""
        return max(0, len(self._requests) - self._batch[0])

    @property
    def cuda_graphed(self) -> bool:
        return bool(self.memory.get("cuda_graphs"))

    def start(self) -> None:
        """Wait for the child to load and warm up; raises EngineClosed with its reason if it could not."""
        try:
            kind, *args = self._events.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise EngineClosed(f"the engine process exited with status {self._process.exitcode}") from None
        if kind == "failed":
            self._process.join(30)
            raise EngineClosed(args[0])
        self.memory = args[0]
        self._reader.start()

    def submit(self, request: GenerationRequest) -> None:
        self.submit_all([request])

    def submit_all(self, requests: list[GenerationRequest]) -> None:
        """Queue all the requests or none, by the in-process engine's rule: the batch's rows and
        max_queued more."""
        with self._lock:
            if not self._open:
                raise EngineClosed(self.failure or f"model {self.name} is shutting down")
            waiting = max(0, len(self._requests) - self.max_batch_size)
            if len(self._requests) + len(requests) > self.max_queued + self.max_batch_size:
                raise QueueFull(f"model {self.name} has {waiting} requests waiting")
            specs = []
            for request in requests:
                id_ = next(self._ids)
                self._requests[id_] = request
                request.on_cancel = lambda id_=id_: self._send(("cancel", [id_]))
                specs.append(RequestSpec.of(id_, request))
            self._send(("submit", specs))

    def close(self, finish_queued: bool = False) -> None:
        """Take no new requests; the child runs the active ones to the end, and cancels the queued ones
        or, with `finish_queued`, runs them too."""
        with self._lock:
            self._open = False
        self._send(("close", finish_queued))

    def cancel_all(self) -> None:
        self._send(("cancel_all",))

    def join(self, timeout: float | None = None) -> bool:
        self._process.join(timeout)
        if self._process.is_alive():
            return False
        if self._reader.is_alive():
            self._reader.join(timeout)
        return not self._reader.is_alive()

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:  # requests, cancellations and closing come from several threads
                self._commands.send(message)
        except (OSError, ValueError):  # the child is gone: the reader ends every sequence
            pass

    def _read(self) -> None:
        """The reader thread: every message from the child, until it ends."""
        while True:
            try:
                kind, *args = self._events.recv()
            except (EOFError, OSError):
                self.failure = f"the engine process of model {self.name} exited unexpectedly"
                logger.error("%s (status %s)", self.failure, self._process.exitcode)
                self._fail_all(self.failure)
                return
            if kind == "ended":
                self._fail_all(f"model {self.name} stopped")  # nothing should be left; never hang one
                return
            items, snapshot, self.max_batch_seen = args
            self._batch = (snapshot.active, snapshot.queued)
            self.metrics.apply(self.name, snapshot)  # before the events: a finished client sees fresh gauges
            for id_, events in items:
                self._deliver(id_, events)

    def _deliver(self, id_: int, events: list[Event]) -> None:
        request = self._requests.get(id_)
        if request is None:
            return
        if isinstance(events[-1], Finished):
            with self._lock:
                self._requests.pop(id_, None)
        try:
            request.on_events(events)
        except Exception:
            logger.exception("request %s: delivering events failed; cancelling it", request.request_id)
            request.cancel()

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self._open = False
            left, self._requests = self._requests, {}
        now = time.monotonic()
        for request in left.values():
            end = Finished(FinishReason.ERROR, "", 0, len(request.prompt_ids), request.params.seed or 0, 0.0, None,
                           now - request.submitted_at, reason)
            try:
                request.on_events([end])
            except Exception:
                logger.exception("request %s: delivering its end failed", request.request_id)
