"""An engine in a process of its own: the child's side (`service.frontend.engine_client` is the server's).

The child loads its model, starts an `Engine` and relays: requests and cancellations come in on
one pipe; after each turn of the engine's loop, everything it produced (every sequence's events,
and what its metrics counted) goes out on the other pipe in one message. So the engine's Python
never waits on the HTTP side's interpreter, nor the HTTP side on the engine's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from charlm.checkpoint import ModelDirError, load_model
from charlm.sampling import SamplingParams
from service.engine.engine import Engine, EngineClosed, QueueFull
from service.engine.grammars import GrammarError, compile_regex
from service.engine.sequences import Event, Finished, GenerationRequest
from service.engine.stopping import FinishReason
from service.frontend.metrics import RecordingMetrics

logger = logging.getLogger(__name__)
COMMAND_POLL_S = 0.05  # how often the child looks whether its engine has ended, between commands


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    name: str
    path: Path
    device: str
    dtype: torch.dtype
    max_batch_size: int
    max_queued: int
    cuda_graphs: bool
    threads: int  # intra-op CPU threads
    log_level: str
    fingerprint: str = ""  # of the weights the server loaded: the child must serve the same version


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """What crosses the pipe of a `GenerationRequest` (its callback stays with the server)."""

    id: int
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...]
    top_n: int
    stream_interval: int
    timeout_s: float | None
    request_id: str
    submitted_at: float  # time.monotonic() is one clock for every process of the machine
    grammar: str | None = None  # issue 22: the regular expression; the child compiles it (cached)
    prompt_logprobs: int | None = None

    @classmethod
    def of(cls, id_: int, r: GenerationRequest) -> RequestSpec:
        regex = r.grammar.source if r.grammar is not None else None
        return cls(id_, r.prompt_ids, r.max_new_tokens, r.params, r.stop, r.top_n, r.stream_interval,
                   r.timeout_s, r.request_id, r.submitted_at, regex, r.prompt_logprobs)


class Relay:
    """The child's requests by id, and the events they produce until the next `flush`."""

    def __init__(self, events: Connection, engine_name: str):
        self.events = events
        self.name = engine_name
        self.metrics = RecordingMetrics()
        self.lock = threading.Lock()
        self.pending: list[tuple[int, list[Event]]] = []
        self.requests: dict[int, GenerationRequest] = {}
        self.engine: Engine | None = None
        self.sent_batch = (0, 0)  # (active, queued) last sent

    def request(self, spec: RequestSpec) -> GenerationRequest:
        assert self.engine is not None
        grammar = compile_regex(spec.grammar, self.engine.vocab) if spec.grammar is not None else None  # issue 22
        request = GenerationRequest(
            spec.prompt_ids, spec.max_new_tokens, spec.params, on_events=lambda events: self.post(spec.id, events),
            stop=spec.stop, top_n=spec.top_n, stream_interval=spec.stream_interval, timeout_s=spec.timeout_s,
            request_id=spec.request_id, submitted_at=spec.submitted_at, grammar=grammar,
            prompt_logprobs=spec.prompt_logprobs,
        )
        self.requests[spec.id] = request
        return request

    def post(self, id_: int, events: list[Event]) -> None:  # the engine thread, or the command thread
        with self.lock:
            self.pending.append((id_, events))
            if isinstance(events[-1], Finished):
                self.requests.pop(id_, None)

    def flush(self) -> None:
        """One message with everything since the last flush (the engine thread after each turn of
        its loop, or the command thread): nothing when nothing happened."""
        with self.lock:
            items, self.pending = self.pending, []
            snapshot = self.metrics.take()
            batch = (snapshot.active, snapshot.queued)
            counted = snapshot.first_chars or snapshot.chars or snapshot.cancelled or any(snapshot.inter_counts)
            if not items and not counted and batch == self.sent_batch:
                return
            self.sent_batch = batch
            largest = self.engine.max_batch_seen if self.engine is not None else 0
            self.events.send(("events", items, snapshot, largest))

    def refuse(self, specs: list[RequestSpec], reason: str) -> None:
        """Requests the engine would not take (it is closing): each ends, cancelled, with the reason."""
        now = time.monotonic()
        for spec in specs:
            end = Finished(FinishReason.CANCELLED, "", 0, len(spec.prompt_ids), spec.params.seed or 0, 0.0, None,
                           now - spec.submitted_at, reason)
            self.post(spec.id, [end])
        self.flush()


def run(spec: EngineSpec, commands: Connection, events: Connection) -> None:
    """The child process: load, warm up, report, then serve commands until the engine ends."""
    logging.basicConfig(level=spec.log_level.upper(), format="%(levelname)s:     [engine %(process)d] %(message)s")
    torch.set_num_threads(1)  # loading needs no more; the engine thread computes
    try:
        loaded = load_model(spec.path, device=spec.device, dtype=spec.dtype)
    except ModelDirError as exc:
        events.send(("failed", str(exc)))
        return
    if spec.fingerprint and loaded.fingerprint != spec.fingerprint:
        events.send(("failed", f"{spec.path}: the weights changed while loading (version {loaded.fingerprint}, "
                               f"expected {spec.fingerprint}); the next look at the directory loads them again"))
        return
    relay = Relay(events, spec.name)
    engine = Engine(spec.name, loaded.model, loaded.vocab, spec.max_batch_size, spec.max_queued, relay.metrics,
                    cuda_graphs=spec.cuda_graphs, after_step=relay.flush)
    relay.engine = engine
    if spec.device == "cpu":
        torch.set_num_threads(spec.threads)
    try:
        engine.start()
    except EngineClosed as exc:
        events.send(("failed", str(exc)))
        return
    events.send(("started", engine.memory))
    serve_commands(engine, relay, commands)
    engine.join()
    relay.flush()
    events.send(("ended",))


def serve_commands(engine: Engine, relay: Relay, commands: Connection) -> None:
    """Until the engine thread ends (closed, and its sequences done) or the server goes away."""
    while not engine.join(0):
        try:
            if not commands.poll(COMMAND_POLL_S):
                continue
            kind, *args = commands.recv()
        except (EOFError, OSError):  # the server is gone: nobody will read the results
            engine.close()
            engine.cancel_all()
            return
        if kind == "submit":
            specs: list[RequestSpec] = args[0]
            try:
                engine.submit_all([relay.request(s) for s in specs])
            except (QueueFull, EngineClosed, GrammarError) as exc:
                relay.refuse(specs, str(exc))
        elif kind == "cancel":
            for id_ in args[0]:
                if (request := relay.requests.get(id_)) is not None:
                    request.cancel()
        elif kind == "cancel_all":
            engine.cancel_all()
        elif kind == "close":
            engine.close(finish_queued=args[0])
