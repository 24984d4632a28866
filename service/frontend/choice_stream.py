"""The part of an OpenAI stream both routes share: each choice's characters as they come, then
its end, written by the route's own chunk writer (completions' or chat's)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Protocol

from service.engine.sequences import Finished, GeneratedToken
from service.engine.stopping import FinishReason
from service.frontend.errors import ServiceError, error_body
from service.frontend.generation import Queued
from service.frontend.stream_text import KEEPALIVE, data_event
from service.frontend.streams import chunk_ids

OPENAI_FINISH = {FinishReason.END: "stop"}  # the grammar's text is complete: OpenAI's natural end


def finish_reason(reason: FinishReason) -> str:
    return OPENAI_FINISH.get(reason, reason.value)


class ChoiceChunks(Protocol):
    """How a route writes a chunk of choice `index`: its text, its characters with their
    log-probabilities, and its end."""

    def text(self, index: int, text: str) -> str: ...

    def characters(self, index: int, tokens: list[GeneratedToken]) -> str: ...

    def end(self, index: int, finish_reason: str) -> str: ...


async def choice_events(queued: Queued, chunks: ChoiceChunks, with_logprobs: bool,
                        ends: dict[int, Finished]) -> AsyncIterator[bytes]:
    """The events of every update: the characters each choice has ready (one chunk per choice),
    and the end of each choice that ended, which goes into `ends`. An engine failure ends the
    stream with an error event and `[DONE]`; the caller then sees an ERROR among `ends`."""
    chars = queued.chars
    async for ready in queued.updates():
        if ready is None:
            yield KEEPALIVE
            continue
        parts: list[str] = []
        for sequence in ready:
            index, end = sequence.index, sequence.end
            if not with_logprobs:
                text = "".join(chars[i] for i in chunk_ids(sequence.take()[0]).tolist())
                if text:
                    parts.append(chunks.text(index, text))
            elif tokens := queued.tokens(sequence):
                parts.append(chunks.characters(index, tokens))
            if end is None:
                continue
            ends[index] = end
            if end.reason is FinishReason.ERROR:
                error = ServiceError(500, end.error or "generation failed", kind="generation")
                parts += [data_event(json.dumps(error_body(error, openai=True))), data_event("[DONE]")]
                yield "".join(parts).encode()
                return
            parts.append(chunks.end(index, finish_reason(end.reason)))
        yield "".join(parts).encode()


def failed(ends: dict[int, Finished]) -> bool:
    return any(end.reason is FinishReason.ERROR for end in ends.values())
