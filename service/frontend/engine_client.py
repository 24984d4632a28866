"""A front end's side of one model's engine: the only code here that knows where the engine runs.

`EngineClient` talks to an engine process over its Unix socket from the event loop: a submission
goes out as one message and waits for the engine's answer (admitted, or refused: 429 and 503 are
decided by the engine, which counts every front end's requests); each step message's characters
go straight to their sequences (`service.frontend.streams`), with no thread between. If the engine
process dies, every sequence in flight ends with an error. `ThreadEngineClient` gives the same
API for an engine in a thread of this process (`CHARLM_ENGINE_PROCESS=false`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time

from service.engine import wire
from service.engine.engine import Engine, EngineClosed, QueueFull
from service.engine.events import StepEvents
from service.engine.grammars import GrammarError
from service.engine.sequences import Finished, GenerationRequest
from service.engine.specs import RequestSpec
from service.engine.stopping import FinishReason
from service.frontend.metrics import ServiceMetrics
from service.frontend.streams import SequenceStream, Submission

logger = logging.getLogger(__name__)
REFUSALS: dict[str, type[Exception]] = {"full": QueueFull, "closed": EngineClosed, "invalid": GrammarError}


class EngineConnection:
    """What both kinds of client share: the sequences in flight, by key, and their delivery."""

    def __init__(self, name: str, metrics: ServiceMetrics):
        self.name = name
        self.metrics = metrics
        self.sequences: dict[int, SequenceStream] = {}
        self.keys = itertools.count()
        self.failure: str | None = None  # why the engine is gone, when it went unexpectedly
        self.closed = False

    @property
    def in_flight(self) -> int:
        """This front end's sequences that have not ended."""
        return len(self.sequences)

    @property
    def active(self) -> int:
        """The engine's running sequences (every front end's)."""
        raise NotImplementedError

    @property
    def queued(self) -> int:
        raise NotImplementedError

    async def submit(self, submission: Submission, specs: list[RequestSpec]) -> None:
        """Queue the sequences, all or none: QueueFull or EngineClosed when the engine refuses."""
        raise NotImplementedError

    def cancel(self, keys: list[int]) -> None:
        raise NotImplementedError

    def cancel_all(self) -> None:
        """Cancel this front end's sequences (each still ends, cancelled, within a step)."""
        if self.sequences:
            self.cancel(list(self.sequences))

    def close(self) -> None:
        self.closed = True

    def _register(self, submission: Submission, specs: list[RequestSpec]) -> list[RequestSpec]:
        if self.closed:
            raise EngineClosed(self.failure or f"model {self.name} is shutting down")
        keyed = []
        for sequence, spec in zip(submission.sequences, specs, strict=True):
            sequence.key = next(self.keys)
            sequence.submitted_at = spec.submitted_at
            self.sequences[sequence.key] = sequence
            keyed.append(dataclasses.replace(spec, key=sequence.key))
        return keyed

    def _unregister(self, submission: Submission) -> None:
        for sequence in submission.sequences:
            self.sequences.pop(sequence.key, None)

    def dispatch(self, events: StepEvents) -> None:
        """A step's characters to their sequences, then the ends."""
        if len(events.keys):
            counts = events.counts.tolist()
            first = 0
            sequences = self.sequences
            for key, count in zip(events.keys.tolist(), counts, strict=True):
                sequence = sequences.get(key)
                if sequence is not None:
                    sequence.add(events, first, count)
                first += count
        for end in events.finished:
            sequence = self.sequences.pop(end.key, None)
            if sequence is not None:
                sequence.finish(end)

    def fail_all(self, reason: str) -> None:
        """End every sequence in flight with an error (the engine is gone)."""
        self.closed = True
        left, self.sequences = self.sequences, {}
        now = time.monotonic()
        for sequence in left.values():
            total_s = now - sequence.submitted_at  # from the request's start, not from the clock's
            sequence.finish(Finished(FinishReason.ERROR, "", 0, 0, 0, 0.0, None, total_s, reason, key=sequence.key))


class EngineClient(EngineConnection):
    """An engine process, over its Unix socket, from this front end's event loop."""

    def __init__(self, name: str, address: str, metrics: ServiceMetrics):
        super().__init__(name, metrics)
        self.address = address
        self._counts = (0, 0)
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader()
        self.admissions: dict[int, asyncio.Future[tuple[str | None, str]]] = {}
        self.submissions = itertools.count()
        self.ended = False  # the engine said it ended (a retired version)

    @property
    def active(self) -> int:
        return self._counts[0]

    @property
    def queued(self) -> int:
        return self._counts[1]

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_unix_connection(lambda: _Protocol(self), self.address)

    async def submit(self, submission: Submission, specs: list[RequestSpec]) -> None:
        """Queue the sequences, all or none: QueueFull or EngineClosed when the engine refuses."""
        keyed = self._register(submission, specs)
        number = next(self.submissions)
        answer = self.admissions[number] = asyncio.get_running_loop().create_future()
        self._send(("submit", number, keyed))
        try:
            refusal, reason = await answer
        finally:
            self.admissions.pop(number, None)
        if refusal is not None:
            self._unregister(submission)
            raise REFUSALS.get(refusal, EngineClosed)(reason)

    def cancel(self, keys: list[int]) -> None:
        self._send(("cancel", keys))

    def close(self) -> None:
        """Disconnect (the engine cancels whatever this front end still runs there)."""
        super().close()
        if self.transport is not None:
            self.transport.close()

    def _send(self, command: tuple[object, ...]) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the engine is gone: connection_lost ends every sequence
        self.transport.write(wire.frame(wire.pack(command)))

    def received(self, data: bytes) -> None:
        for payload in self.reader.feed(data):
            kind = payload[:1]
            if kind == wire.STEP:
                message = wire.decode_step(payload)
                self._counts = (message.active, message.queued)
                self.metrics.engine_counts(self.name, message.active, message.queued, message.metrics)
                self.dispatch(message.events)
            elif kind == wire.ADMISSION:
                number, refusal, reason = wire.decode(payload)
                if (answer := self.admissions.get(number)) is not None and not answer.done():
                    answer.set_result((refusal, reason))
            elif kind == wire.LIFE and wire.decode(payload)[0] == "ended":
                self.ended = True

    def lost(self) -> None:
        """The connection ended: the engine ended (a retired version, or shutdown) or died."""
        reason = f"model {self.name} stopped"
        if not self.ended and not self.closed:
            self.failure = reason = f"the engine process of model {self.name} exited unexpectedly"
            logger.error(reason)
        for answer in self.admissions.values():
            if not answer.done():
                answer.set_result(("closed", reason))
        self.fail_all(reason)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: EngineClient):
        self.client = client

    def data_received(self, data: bytes) -> None:
        try:
            self.client.received(data)
        except Exception:  # a bug here must not cut every stream of the model
            logger.exception("model %s: handling the engine's message failed", self.client.name)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost()


class ThreadEngineClient(EngineConnection):
    """An engine in a thread of this process: its steps come to the event loop as they are."""

    def __init__(self, engine: Engine, metrics: ServiceMetrics, loop: asyncio.AbstractEventLoop):
        super().__init__(engine.name, metrics)
        self.engine = engine
        self.loop = loop
        self.requests: dict[int, GenerationRequest] = {}
        engine.sink = _ThreadSink(self)

    @property
    def active(self) -> int:
        return self.engine.active

    @property
    def queued(self) -> int:
        return self.engine.queued

    async def submit(self, submission: Submission, specs: list[RequestSpec]) -> None:
        keyed = self._register(submission, specs)
        try:
            requests = [spec.request(0, self.engine.vocab) for spec in keyed]
            self.engine.submit_all(requests)
        except (QueueFull, EngineClosed, GrammarError):
            self._unregister(submission)
            raise
        for request in requests:
            self.requests[request.key] = request

    def cancel(self, keys: list[int]) -> None:
        for key in keys:
            if (request := self.requests.get(key)) is not None:
                request.cancel()

    def dispatch(self, events: StepEvents) -> None:
        super().dispatch(events)
        for end in events.finished:
            self.requests.pop(end.key, None)


class _ThreadSink:
    def __init__(self, client: ThreadEngineClient):
        self.client = client

    def accepted(self, requests: list[GenerationRequest]) -> None:
        pass

    def deliver(self, events: StepEvents) -> None:
        if events:
            try:
                self.client.loop.call_soon_threadsafe(self.client.dispatch, events)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                self.client.engine.cancel_all()

