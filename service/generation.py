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
from collections.abc import AsyncIterator, Awaitable, Callable

from charlm.generation import prompt_ids
from charlm.sampling import MAX_SEED, SamplingParams
from charlm.vocab import UnknownCharactersError
from service.engine import Engine, QueueFull
from service.errors import ServiceError
from service.registry import ModelEntry
from service.sequences import Event, Finished, GeneratedToken, GenerationRequest
from service.settings import Settings

DISCONNECT_POLL_S = 0.05  # how often a non-streaming request checks that its client is still there


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """What to generate, whatever the protocol: validated by the route's schema."""

    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...] = ()
    top_n: int = 0


@dataclasses.dataclass
class SequenceResult:
    tokens: list[GeneratedToken]
    finished: Finished


def encode_prompt(entry: ModelEntry, prompt: str, settings: Settings, param: str) -> list[int]:
    """Prompt ids for the model; 422 naming characters outside its vocabulary."""
    if len(prompt) > settings.max_prompt_chars:
        raise ServiceError(422, f"prompt of {len(prompt)} characters exceeds the limit of "
                           f"{settings.max_prompt_chars}", param=param, kind="validation")
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


class Submission:
    """The sequences of one HTTP request."""

    def __init__(self, engine: Engine, prompts: list[list[int]], spec: GenerationSpec, request_id: str,
                 timeout_s: float, seed_offsets: list[int] | None = None):
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        offsets = seed_offsets or [0] * len(prompts)
        self.requests = [
            GenerationRequest(
                prompt_ids=ids, max_new_tokens=spec.max_new_tokens, params=offset_seed(spec.params, offset),
                on_event=functools.partial(self._on_event, index), stop=spec.stop, top_n=spec.top_n,
                timeout_s=timeout_s, request_id=request_id,
            )
            for index, (ids, offset) in enumerate(zip(prompts, offsets, strict=True))
        ]
        self.unfinished = set(range(len(prompts)))

    def _on_event(self, index: int, event: Event) -> None:  # called from the engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

    def submit(self) -> None:
        """Queue every sequence or none: 429 when the engine's queue cannot take them all."""
        try:
            for request in self.requests:
                self.engine.submit(request)
        except QueueFull as exc:
            self.cancel()
            raise ServiceError(429, f"too many requests queued: {exc}", kind="overloaded") from None

    def cancel(self) -> None:
        for index in self.unfinished:
            self.requests[index].cancel()

    async def events(self, keepalive_s: float | None = None) -> AsyncIterator[tuple[int, Event] | None]:
        """(sequence index, event) pairs until every sequence has finished.

        Yields None after `keepalive_s` without an event, so a stream can send a keep-alive.
        """
        try:
            while self.unfinished:
                try:
                    index, event = await asyncio.wait_for(self.queue.get(), keepalive_s)
                except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
                    yield None
                    continue
                if isinstance(event, Finished):
                    self.unfinished.discard(index)
                yield index, event
        finally:
            self.cancel()  # the consumer left early: free the batch rows

    async def results(self, disconnected: Callable[[], Awaitable[bool]]) -> list[SequenceResult]:
        """Every sequence's tokens and end; cancels them all if the client disconnects."""
        tokens: list[list[GeneratedToken]] = [[] for _ in self.requests]
        ends: dict[int, Finished] = {}
        async for item in self.events(DISCONNECT_POLL_S):
            if item is None:
                if await disconnected():
                    raise ClientGone()
                continue
            index, event = item
            if isinstance(event, Finished):
                ends[index] = event
            else:
                tokens[index].append(event)
        return [SequenceResult(tokens[i], ends[i]) for i in range(len(self.requests))]


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its sequences were cancelled."""
