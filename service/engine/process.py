"""An engine in a process of its own, serving every front end that connects to it.

The process loads its model, starts an `Engine`, reports to the control plane that started it
(one pipe: started or failed, then a pulse every half second, close and cancel commands, then
ended), and listens on a Unix socket. Each front end that connects gets a `Link`: its requests and
cancellations arrive there (a thread per link), and after every turn of the engine's loop the relay
sends each link its part of what the turn produced, as one message (`service.engine.wire`).
Admission is decided here, from the requests of every front end together. A front end that goes
away has its requests cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, Listener
from typing import Any

import msgspec
import torch

from charlm.checkpoint import ModelDirError, load_model
from service.engine import collector, wire
from service.engine.engine import Engine, EngineClosed, QueueFull
from service.engine.events import StepEvents
from service.engine.grammars import GrammarError
from service.engine.metrics import RecordingMetrics
from service.engine.sequences import GenerationRequest
from service.engine.specs import EngineSpec, ModelInfo, RequestSpec
from service.process_title import set_title

logger = logging.getLogger(__name__)
COMMAND_POLL_S = 0.05  # how often the process looks whether its engine has ended, between commands
PULSE_S = 0.5  # how often it tells the control plane it lives, and how its engine's turn goes


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
            command: list[Any] = wire.unpack(link.connection.recv_bytes())
        except (EOFError, OSError):
            break
        except (msgspec.DecodeError, ValueError):  # not a command: the front end speaks another version
            logger.error("front end %d sent a message that is not a command; disconnecting it", link.index)
            break
        if command[0] == "submit":
            admit(engine, link, command[1], wire.convert(command[2], list[RequestSpec]))
        elif command[0] == "cancel":
            for key in command[1]:
                if (cancelled := link.requests.get(key)) is not None:
                    cancelled.cancel()
    link.open = False
    relay.remove(link)
    for request in list(link.requests.values()):
        request.cancel()
    link.connection.close()


def admit(engine: Engine, link: Link, submission: int, specs: list[RequestSpec]) -> None:
    """Queue a front end's submission, all or none, and answer it: admitted, or refused and why."""
    try:
        requests = [spec.request(link.index, engine.vocab) for spec in specs]
    except GrammarError as exc:  # the front end checked it: a grammar that no longer compiles here
        link.send(wire.encode(wire.ADMISSION, submission, "invalid", str(exc)))
        return
    for request in requests:  # before they are queued: their first events may come before the answer
        link.requests[request.key] = request
    try:
        engine.submit_all(requests)
    except (QueueFull, EngineClosed) as exc:
        for request in requests:
            link.requests.pop(request.key, None)
        refusal = "full" if isinstance(exc, QueueFull) else "closed"
        link.send(wire.encode(wire.ADMISSION, submission, refusal, str(exc)))
        return
    link.send(wire.encode(wire.ADMISSION, submission, None, ""))


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
    set_title(f"engine {spec.name}", "charlm-engine")
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
                    choose_dtype=spec.choose_dtype, model_dir=loaded.path)
    if spec.device == "cpu":
        torch.set_num_threads(spec.threads)
    try:
        engine.start()
    except EngineClosed as exc:
        control.send(("failed", str(exc)))
        return
    listener = Listener(spec.address, family="AF_UNIX", backlog=64)
    threading.Thread(target=accept_links, args=(listener, engine, relay), daemon=True, name="accept").start()
    collector.settle()  # the model, the engine and its decode state live as long as the process
    control.send(("started", engine.memory, ModelInfo.of(loaded)))
    serve_control(engine, control)
    engine.join()
    for link in list(relay.links.values()):
        link.send(wire.encode(wire.LIFE, "ended"))
    listener.close()
    with contextlib.suppress(OSError):  # the control plane may be gone already (it stopped at once)
        control.send(("ended",))
    # Everything is said and closed: leave now rather than through the interpreter's teardown (torch's
    # and the threads' took seconds per engine, which every shutdown and rolling update waited for).
    logging.shutdown()
    os._exit(0)


def serve_control(engine: Engine, control: Connection) -> None:
    """The control plane's commands, until the engine thread ends (closed, and its sequences done)
    or the control plane goes away."""
    next_pulse = 0.0
    while not engine.join(0):
        try:
            if time.monotonic() >= next_pulse:  # from this thread: a stopped process sends none
                control.send(("pulse", *engine.pulse()))
                next_pulse = time.monotonic() + PULSE_S
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
