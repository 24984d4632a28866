"""From an HTTP request to engine sequences and back, on the event loop.

A protocol's route turns its request into a `GenerationSpec` and one prompt per
sequence; `Submission` queues them on the model's engine all at once (all or
none) and merges their events into one asyncio queue. Leaving the event
iterator early, or a client disconnect, cancels every unfinished sequence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from charlm.generation import prompt_ids
from charlm.grammar import Automaton
from charlm.sampling import MAX_SEED, SamplingParams
from charlm.vocab import UnknownCharactersError
from service.control.model_entry import ModelEntry
from service.engine.engine import Engine, EngineClosed, QueueFull
from service.engine.sequences import Event, Finished, GeneratedToken, GenerationRequest
from service.frontend.engine_client import EngineClient
from service.frontend.errors import ServiceError
from service.settings import Settings

DISCONNECT_POLL_S = 0.05  # how often a non-streaming request checks that its client is still there
QUIET: tuple[int, list[Event]] = (-1, [])  # put in a submission's queue when nothing came for a while


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """What to generate, whatever the protocol: validated by the route's schema."""

    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...] = ()
    top_n: int = 0
    stream_interval: int = 0  # a stream's events every this many characters; 0: all at the end
    grammar: Automaton | None = None  # issue 22: compiled by the front end (service.frontend.grammar)
    prompt_logprobs: int | None = None  # issue 22: score the prompt (the first sequence of each prompt only)


@dataclasses.dataclass
class SequenceResult:
    tokens: list[GeneratedToken]
    finished: Finished

    @property
    def mean_logprob(self) -> float:
        """What best_of compares: the mean log-probability of the characters (a text with none ranks last)."""
        return sum(t.logprob for t in self.tokens) / len(self.tokens) if self.tokens else float("-inf")


def best_first(results: list[SequenceResult]) -> list[int]:
    """Indices of `results` by mean log-probability, highest first (earlier first among equals)."""
    return sorted(range(len(results)), key=lambda i: -results[i].mean_logprob)


def encode_prompt(entry: ModelEntry, prompt: str, settings: Settings, param: str) -> list[int]:
    """Prompt ids for the model; 422 naming characters outside its vocabulary."""
    if len(prompt) > settings.max_prompt_chars:
        raise ServiceError(422, f"prompt of {len(prompt)} characters exceeds the limit of "
                           f"{settings.max_prompt_chars}", param=param)
    assert entry.loaded is not None
    try:
        return prompt_ids(entry.loaded.vocab, prompt)
    except UnknownCharactersError as exc:
        raise ServiceError(422, f"{param}: {exc}", param=param, kind="unknown_characters") from None


def offset_seed(params: SamplingParams, offset: int) -> SamplingParams:
    """Choice j of a seeded request draws with seed + j, so n choices differ yet repeat."""
    if params.seed is None or offset == 0:
        return params
    return dataclasses.replace(params, seed=(params.seed + offset) % (MAX_SEED + 1))


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its sequences were cancelled."""


class Mailbox:
    """Delivery from engine threads to the event loop, with one wake-up per burst.

    Waking the loop costs a system call and a turn of the loop; an engine step hands
    events to every active request at once, so they travel together.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue[Any], Any]] = []
        self.scheduled = False

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """Called from any thread; `item` reaches `queue` on the loop's next turn."""
        with self.lock:
            self.items.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Submission:
    """The sequences of one HTTP request."""

    def __init__(self, engine: Engine | EngineClient, prompts: list[list[int]], spec: GenerationSpec, request_id: str,
                 timeout_s: float, mailbox: Mailbox, seed_offsets: list[int] | None = None):
        self.engine = engine
        self.mailbox = mailbox
        self.queue: asyncio.Queue[tuple[int, list[Event]]] = asyncio.Queue()
        offsets = seed_offsets or [0] * len(prompts)
        self.requests = [
            GenerationRequest(
                prompt_ids=ids, max_new_tokens=spec.max_new_tokens, params=offset_seed(spec.params, offset),
                on_events=functools.partial(self._on_events, index), stop=spec.stop, top_n=spec.top_n,
                stream_interval=spec.stream_interval, timeout_s=timeout_s, request_id=request_id,
                grammar=spec.grammar, prompt_logprobs=spec.prompt_logprobs if offset == 0 else None,
            )
            for index, (ids, offset) in enumerate(zip(prompts, offsets, strict=True))
        ]
        self.unfinished = set(range(len(prompts)))

    def _on_events(self, index: int, events: list[Event]) -> None:  # called from the engine thread
        try:
            self.mailbox.post(self.queue, (index, events))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            self.requests[index].cancel()

    def submit(self) -> None:
        """Queue every sequence or none: 429 when the engine's queue is full, 503 when it is closing."""
        try:
            self.engine.submit_all(self.requests)
        except QueueFull as exc:
            raise ServiceError(429, f"too many requests queued: {exc}") from None
        except EngineClosed as exc:
            raise ServiceError(503, str(exc)) from None

    def cancel(self) -> None:
        for index in self.unfinished:
            self.requests[index].cancel()

    async def events(self, quiet_s: float) -> AsyncIterator[list[tuple[int, list[Event]]] | None]:
        """Batches of (sequence index, that sequence's new events) until every sequence has finished:
        everything that arrived since the last batch, so a stream that fell behind catches up in
        one write.

        Yields None when `quiet_s` passes without events, so a stream can send a keep-alive.
        One timer per submission, re-armed, rather than a timeout per event: this loop runs
        once per step of every stream.
        """
        loop = asyncio.get_running_loop()
        heard = [True]

        def tick() -> None:
            if not heard[0]:
                self.queue.put_nowait(QUIET)
            heard[0] = False
            timer[0] = loop.call_later(quiet_s, tick)

        timer = [loop.call_later(quiet_s, tick)]
        try:
            while self.unfinished:
                items = [await self.queue.get()]
                while not self.queue.empty():
                    items.append(self.queue.get_nowait())
                batch = [item for item in items if item[0] != QUIET[0]]
                if not batch:
                    yield None
                    continue
                heard[0] = True
                for index, events in batch:
                    if isinstance(events[-1], Finished):
                        self.unfinished.discard(index)
                yield batch
        finally:
            timer[0].cancel()
            self.cancel()  # the consumer left early: free the batch rows

    async def results(self, disconnected: Callable[[], Awaitable[bool]]) -> list[SequenceResult]:
        """Every sequence's tokens and end; cancels them all if the client disconnects."""
        tokens: list[list[GeneratedToken]] = [[] for _ in self.requests]
        ends: dict[int, Finished] = {}
        checked = time.monotonic()
        async for batch in self.events(DISCONNECT_POLL_S):
            if time.monotonic() - checked >= DISCONNECT_POLL_S:
                checked = time.monotonic()
                if await disconnected():
                    self.cancel()
                    raise ClientGone()
            for index, events in batch or ():
                for event in events:
                    if isinstance(event, Finished):
                        ends[index] = event
                    else:
                        tokens[index].append(event)
        return [SequenceResult(tokens[i], ends[i]) for i in range(len(self.requests))]
