"""From an HTTP request to engine sequences and back, on the event loop.

A protocol's route turns its request into a `GenerationSpec` and one prompt per
sequence; `Queued` queues them on the model's engine all at once (all or none),
and their characters come back into a `Submission` (`service.frontend.streams`),
which a streaming response writes as they come and a plain answer collects. A
client that disconnects, or a response that ends early, cancels every
unfinished sequence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from charlm.grammar import Automaton
from charlm.sampling_params import MAX_SEED, SamplingParams
from charlm.vocab import UnknownCharactersError, Vocab
from service.engine.engine import EngineClosed, QueueFull
from service.engine.grammars import GrammarError
from service.engine.sequences import Finished, GeneratedToken
from service.engine.specs import RequestSpec
from service.frontend.engine_client import EngineConnection
from service.frontend.errors import ServiceError
from service.frontend.models import ModelView
from service.frontend.streams import Pacer, SequenceStream, Submission


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """What to generate, whatever the protocol: validated by the route's schema."""

    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...] = ()
    top_n: int = 0
    stream_interval: int = 0  # a stream writes once this many characters are ready; 0: all at the end
    grammar: Automaton | None = None  # compiled by the front end (service.frontend.grammar), to check it
    prompt_logprobs: int | None = None  # score the prompt (the first sequence of each prompt only)


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


def encode_prompt(vocab: Vocab, prompt: str, limit: int, param: str) -> list[int]:
    """Prompt ids for the model (the start character for an empty prompt); 422 naming characters
    outside its vocabulary."""
    if len(prompt) > limit:
        raise ServiceError(422, f"prompt of {len(prompt)} characters exceeds the limit of {limit}", param=param)
    if not prompt:
        return [vocab.start_id]
    try:
        ids: list[int] = vocab.encode(prompt).tolist()
    except UnknownCharactersError as exc:
        raise ServiceError(422, f"{param}: {exc}", param=param, kind="unknown_characters") from None
    return ids


def offset_seed(params: SamplingParams, offset: int) -> SamplingParams:
    """Choice j of a seeded request draws with seed + j, so n choices differ yet repeat."""
    if params.seed is None or offset == 0:
        return params
    return dataclasses.replace(params, seed=(params.seed + offset) % (MAX_SEED + 1))


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its sequences were cancelled."""


class Queued:
    """The sequences of one HTTP request on their engine."""

    def __init__(self, client: EngineConnection, view: ModelView, prompts: list[list[int]], spec: GenerationSpec,
                 request_id: str, timeout_s: float, pacer: Pacer, seed_offsets: list[int] | None = None):
        self.client = client
        self.view = view
        self.spec = spec
        offsets = seed_offsets or [0] * len(prompts)
        regex = spec.grammar.source if spec.grammar is not None else None  # the engine compiles it (cached)
        self.specs = [RequestSpec(-1, ids, spec.max_new_tokens, offset_seed(spec.params, offset), spec.stop,
                                  spec.top_n, timeout_s, request_id, time.monotonic(), regex,
                                  spec.prompt_logprobs if offset == 0 else None)
                      for ids, offset in zip(prompts, offsets, strict=True)]
        self.submission = Submission(len(prompts), spec.stream_interval, pacer, client.cancel)
        assert view.info is not None
        self.chars = view.info.chars

    async def submit(self) -> None:
        """Queue every sequence or none: 429 when the engine's queue is full, 503 when it is closing."""
        try:
            await self.client.submit(self.submission, self.specs)
        except QueueFull as exc:
            raise ServiceError(429, f"too many requests queued: {exc}") from None
        except EngineClosed as exc:
            raise ServiceError(503, str(exc)) from None
        except GrammarError as exc:
            raise ServiceError(422, str(exc), param="grammar") from None

    def tokens(self, sequence: SequenceStream) -> list[GeneratedToken]:
        """The sequence's pending characters as tokens (taking them)."""
        chunks, position = sequence.take()
        tokens: list[GeneratedToken] = []
        chars = self.chars
        for events, first, count in chunks:
            tops = events.alternatives(chars, first, count)
            ids = events.id_list[first : first + count]  # the message's lists, made once for all its readers
            logprobs = events.logprob_list[first : first + count]
            for j, (char_id, logprob) in enumerate(zip(ids, logprobs, strict=True)):
                position += 1
                tokens.append(GeneratedToken(position, char_id, chars[char_id], logprob, tops.get(first + j, ())))
        return tokens

    async def results(self, disconnected: Callable[[], Awaitable[bool]]) -> list[SequenceResult]:
        """Every sequence's tokens and end; cancels them all if the client disconnects."""
        watch = asyncio.ensure_future(watch_disconnect(disconnected, self.submission))
        tokens: list[list[GeneratedToken]] = [[] for _ in self.submission.sequences]
        try:
            async for ready in self.submission.updates():
                for sequence in ready or ():
                    tokens[sequence.index] += self.tokens(sequence)
        finally:
            watch.cancel()
        if self.submission.gone:
            raise ClientGone()
        return [SequenceResult(tokens[s.index], with_text(s.end, tokens[s.index]))
                for s in self.submission.sequences if s.end is not None]

    def updates(self) -> AsyncIterator[list[SequenceStream] | None]:
        return self.submission.updates()


def text_of_ids(ids: list[int], chars: list[str], model: str, param: str, said: str) -> str:
    """The text of character ids; a 422 naming the ids outside the vocabulary (`said`: how the
    message names them)."""
    outside = sorted({i for i in ids if not 0 <= i < len(chars)})
    if outside:
        raise ServiceError(422, f"{said} {outside[:10]} outside the vocabulary of model {model} "
                           f"(ids 0 to {len(chars) - 1})", param=param, kind="unknown_characters")
    return "".join(chars[i] for i in ids)


def with_text(end: Finished | None, tokens: list[GeneratedToken]) -> Finished:
    assert end is not None
    return dataclasses.replace(end, text="".join(t.text for t in tokens))


async def watch_disconnect(disconnected: Callable[[], Awaitable[bool]], submission: Submission) -> None:
    """Wait for the client to go away; then cancel the submission's sequences."""
    if await disconnected():
        submission.client_gone()


def disconnect_of(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> Callable[[], Awaitable[bool]]:
    """Waits for an ASGI connection's disconnect message (the request's body was read before):
    one task per request, rather than asking again every few milliseconds."""
    async def disconnected() -> bool:
        while (await receive())["type"] != "http.disconnect":
            pass
        return True

    return disconnected

