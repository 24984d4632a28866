"""An engine in a process of its own, serving every front end that connects to it.

The process loads its model, starts an `Engine`, reports to the control plane that started it
(one pipe: started or failed, then close and cancel commands, then ended), and listens on a Unix
socket. Each front end that connects gets a `Link`: its requests and cancellations arrive there
(a thread per link), and after every turn of the engine's loop the relay sends each link its part
of what the turn produced, as one message (`service.engine.wire`). Admission is decided here, from
the requests of every front end together. A front end that goes away has its requests cancelled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import signal
import threading
from multiprocessing.connection import Connection, Listener
from pathlib import Path

import torch

from charlm.checkpoint import LoadedModel, ModelDirError, load_model
from charlm.sampling_params import SamplingParams
from charlm.vocab import Vocab
from service.engine import wire
from service.engine.engine import Engine, EngineClosed, QueueFull
from service.engine.events import StepEvents
from service.engine.metrics import RecordingMetrics
from service.engine.sequences import GenerationRequest

logger = logging.getLogger(__name__)
COMMAND_POLL_S = 0.05  # how often the process looks whether its engine has ended, between commands


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
    fingerprint: str = ""  # of the weights the control plane read: the engine must serve the same version
    address: str = ""  # the Unix socket front ends connect to
    compile_step: bool | None = None  # torch.compile the decode step (None: on CUDA)
    choose_dtype: bool = False  # `dtype` is float32, and the engine times which dtype decodes faster


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a front end needs to know of a served version: to encode prompts and to describe it."""

    architecture: str
    parameters: int
    chars: list[str]  # the vocabulary, by id
    start_char: str  # where a generation from an empty prompt starts
    context_length: int | None
    version: str  # the weights' fingerprint

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelInfo:
        model, vocab = loaded.model, loaded.vocab
        return cls(model.architecture, model.num_parameters(), list(vocab.chars), vocab.start_char,
                   model.context_size, loaded.fingerprint)

    @functools.cached_property
    def vocab(self) -> Vocab:
        return Vocab(self.chars, self.start_char)


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """What crosses the socket of a `GenerationRequest`."""

    key: int
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...]
    top_n: int
    timeout_s: float | None
    request_id: str
    submitted_at: float  # time.monotonic() is one clock for every process of the machine

    @classmethod
    def of(cls, r: GenerationRequest) -> RequestSpec:
        return cls(r.key, r.prompt_ids, r.max_new_tokens, r.params, r.stop, r.top_n, r.timeout_s, r.request_id,
                   r.submitted_at)

    def request(self, client: int) -> GenerationRequest:
        return GenerationRequest(self.prompt_ids, self.max_new_tokens, self.params, stop=self.stop, top_n=self.top_n,
                                 timeout_s=self.timeout_s, request_id=self.request_id, submitted_at=self.submitted_at,
                                 key=self.key, client=client)


class Link:
    """One front end's connection: its requests by key, and one lock for what is sent to it."""

    def __init__(self, connection: Connection, index: int):
        self.connection = connection
        self.index = index
        self.requests: dict[int, GenerationRequest] = {}
        self.lock = threading.Lock()
        self.open = True

    def send(self, payload: bytes) -> None:
        try:
            with self.lock:
                self.connection.send_bytes(payload)
        except (OSError, ValueError):  # the front end is gone: its reader cancels its requests
            self.open = False


class Relay:
    """The engine's sink: each turn's events, split by front end, one message each."""

    def __init__(self) -> None:
        self.metrics = RecordingMetrics()
        self.links: dict[int, Link] = {}
        self.lock = threading.Lock()  # the links
        self.sent_batch: dict[int, tuple[int, int]] = {}  # per link: (active, queued) last sent

    def accepted(self, requests: list[GenerationRequest]) -> None:
        pass

    def deliver(self, events: StepEvents) -> None:
        with self.lock:
            links = [link for link in self.links.values() if link.open]
        if not links:
            return
        snapshot = self.metrics.snapshot
        batch = (snapshot.active, snapshot.queued)
        reporter = links[0]  # the oldest front end counts the metrics, so that they add up once
        counted = self.metrics.take() if snapshot.counted else None
        for link in links:
            part = events.for_client(link.index) if events else events
            metrics = counted if link is reporter else None
            if not part and metrics is None and self.sent_batch.get(link.index) == batch:
                continue
            self.sent_batch[link.index] = batch
            link.send(wire.encode_step(part, *batch, metrics))
            for end in part.finished:
                link.requests.pop(end.key, None)

    def add(self, connection: Connection, index: int) -> Link:
        link = Link(connection, index)
        with self.lock:
            self.links[index] = link
        return link

    def remove(self, link: Link) -> None:
        with self.lock:
            self.links.pop(link.index, None)
            self.sent_batch.pop(link.index, None)


def serve_link(engine: Engine, link: Link, relay: Relay) -> None:
    """A front end's commands, until it goes away; then its requests are cancelled."""
    while True:
        try:
            kind, *args = link.connection.recv()
        except (EOFError, OSError):
            break
        if kind == "submit":
            submission, specs = args
            requests = [spec.request(link.index) for spec in specs]
            for request in requests:
                link.requests[request.key] = request
            try:
                engine.submit_all(requests)
            except (QueueFull, EngineClosed) as exc:
                for request in requests:
                    link.requests.pop(request.key, None)
                refusal = "full" if isinstance(exc, QueueFull) else "closed"
                link.send(wire.encode(wire.ADMISSION, submission, refusal, str(exc)))
                continue
            link.send(wire.encode(wire.ADMISSION, submission, None, ""))
        elif kind == "cancel":
            for key in args[0]:
                if (request := link.requests.get(key)) is not None:
                    request.cancel()
    link.open = False
    relay.remove(link)
    for request in list(link.requests.values()):
        request.cancel()
    link.connection.close()


def accept_links(listener: Listener, engine: Engine, relay: Relay) -> None:
    """Every front end that connects, each served by a thread of its own."""
    index = 0
    while True:
        try:
            connection = listener.accept()
        except OSError:  # the listener was closed: the engine is ending
            return
        link = relay.add(connection, index)
        threading.Thread(target=serve_link, args=(engine, link, relay), daemon=True,
                         name=f"link-{index}").start()
        index += 1


def run(spec: EngineSpec, control: Connection) -> None:
    """The engine process: load, warm up, listen, report, then serve until the engine ends. Signals
    are its control plane's to act on (a terminal's Ctrl-C reaches every process of the server): it
    ends when told to close, or when the control plane goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level.upper(), format="%(levelname)s:     [engine %(process)d] %(message)s")
    torch.set_num_threads(1)  # loading needs no more; the engine thread computes
    try:
        loaded = load_model(spec.path, device=spec.device, dtype=spec.dtype)
    except ModelDirError as exc:
        control.send(("failed", str(exc)))
        return
    if spec.fingerprint and loaded.fingerprint != spec.fingerprint:
        control.send(("failed", f"{spec.path}: the weights changed while loading (version {loaded.fingerprint}, "
                                f"expected {spec.fingerprint}); the next look at the directory loads them again"))
        return
    relay = Relay()
    engine = Engine(spec.name, loaded.model, loaded.vocab, spec.max_batch_size, spec.max_queued, relay.metrics,
                    cuda_graphs=spec.cuda_graphs, sink=relay, compile_step=spec.compile_step,
                    choose_dtype=spec.choose_dtype)
    if spec.device == "cpu":
        torch.set_num_threads(spec.threads)
    try:
        engine.start()
    except EngineClosed as exc:
        control.send(("failed", str(exc)))
        return
    listener = Listener(spec.address, family="AF_UNIX", backlog=64)
    threading.Thread(target=accept_links, args=(listener, engine, relay), daemon=True, name="accept").start()
    control.send(("started", engine.memory, ModelInfo.of(loaded)))
    serve_control(engine, control)
    engine.join()
    for link in list(relay.links.values()):
        link.send(wire.encode(wire.LIFE, "ended"))
    listener.close()
    with contextlib.suppress(OSError):  # the control plane may be gone already (it stopped at once)
        control.send(("ended",))


def serve_control(engine: Engine, control: Connection) -> None:
    """The control plane's commands, until the engine thread ends (closed, and its sequences done)
    or the control plane goes away."""
    while not engine.join(0):
        try:
            if not control.poll(COMMAND_POLL_S):
                continue
            kind, *args = control.recv()
        except (EOFError, OSError):  # the server is gone: nobody will read the results
            engine.close()
            engine.cancel_all()
            return
        if kind == "cancel_all":
            engine.cancel_all()
        elif kind == "close":
            engine.close(finish_queued=args[0])
