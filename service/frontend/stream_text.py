"""The text of stream events, built from prebuilt fragments rather than through Pydantic.

An event is written for every character of every stream, on the event loop: at
hundreds of thousands of characters per second, building and validating models
per event would cost more than everything else. Characters arrive as arrays
(`service.frontend.streams`); each vocabulary entry's JSON fragment is built once
per model. The final events of a stream, written once, still go through the
schemas. The JSON here is what `json.dumps` writes for the same objects.
"""

from __future__ import annotations

import functools
import json
import math

from service.engine.events import StepEvents
from service.engine.sequences import Alternative, GeneratedToken

KEEPALIVE = b": keep-alive\n\n"


@functools.lru_cache(maxsize=65536)
def json_text(text: str) -> str:
    """A JSON string (characters repeat: a vocabulary is small)."""
    return json.dumps(text, ensure_ascii=False)


def json_float(value: float) -> str:
    return repr(value) if -math.inf < value < math.inf else json.dumps(value)


def data_event(json_data: str) -> str:
    return f"data: {json_data}\n\n"


class TGIText:
    """TGI's per-character stream events for one model's vocabulary."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        # '{"id": 5, "text": "a", "logprob": ' for each character id
        self.heads = [f'{{"id": {i}, "text": {json_text(c)}, "logprob": ' for i, c in enumerate(chars)]

    def token(self, t: GeneratedToken | Alternative) -> str:
        return f'{self.heads[t.id]}{json_float(t.logprob)}, "special": false}}'

    def chunk_events(self, chunks: list[tuple[StepEvents, int, int]], position: int, written: list[int]) -> str:
        """The events of characters in message chunks (none with alternatives), the first at
        `position` + 1; their ids are added to `written`. This runs for every character of every
        stream: each message's characters and log-probabilities are read as Python lists and JSON
        text made once per message."""
        heads, parts = self.heads, []
        for events, first, count in chunks:
            ids = events.id_list[first : first + count]
            for i, logprob in zip(ids, events.logprob_json[first : first + count], strict=True):
                position += 1
                parts.append(f'data: {{"index": {position}, "token": {heads[i]}{logprob}, "special": false}}, '
                             f'"top_tokens": null, "generated_text": null, "details": null}}\n\n')
            written += ids
        return "".join(parts)

    def event(self, t: GeneratedToken) -> str:
        """TGI's `StreamResponse` for one character that is not the last of its stream."""
        top = "[" + ", ".join(self.token(a) for a in t.top) + "]" if t.top else "null"
        return data_event(f'{{"index": {t.position}, "token": {self.token(t)}, "top_tokens": {top}, '
                          f'"generated_text": null, "details": null}}')


class OpenAIChunks:
    """The chunks of one OpenAI completion stream: several characters of a choice that are ready
    together travel in one chunk, their `logprobs` lists in step."""

    def __init__(self, completion_id: str, created: int, model: str, logprobs: int | None, offsets: list[int]):
        header = json.dumps({"id": completion_id, "object": "text_completion", "created": created, "model": model},
                            ensure_ascii=False)
        self.prefix = header[:-1] + ', "choices": ['
        self.suffix = '], "usage": null, "system_fingerprint": null}'
        self.logprobs = logprobs
        self.offsets = offsets  # per choice: the length of its echoed prompt, which text offsets count

    def characters(self, index: int, tokens: list[GeneratedToken]) -> str:
        """One chunk carrying `tokens` of choice `index`."""
        text = json.dumps("".join(t.text for t in tokens), ensure_ascii=False)
        return self.choice(index, text, self._logprobs(tokens, self.offsets[index]))

    def text(self, index: int, text: str) -> str:
        """One chunk of text without log-probabilities (the common case, without tokens)."""
        return self.choice(index, json.dumps(text, ensure_ascii=False), "null")

    def end(self, index: int, finish_reason: str) -> str:
        return self.choice(index, '""', "null", json.dumps(finish_reason))

    def choice(self, index: int, text: str, logprobs: str, finish_reason: str = "null") -> str:
        choice = f'{{"text": {text}, "index": {index}, "logprobs": {logprobs}, "finish_reason": {finish_reason}}}'
        return data_event(self.prefix + choice + self.suffix)

    def _logprobs(self, tokens: list[GeneratedToken], offset: int) -> str:
        if self.logprobs is None:
            return "null"
        top = [{a.text: a.logprob for a in t.top} for t in tokens] if self.logprobs else None
        return json.dumps({
            "tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": top, "text_offset": [offset + t.position - 1 for t in tokens],
        }, ensure_ascii=False)


def utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


class ChatChunks:
    """The chunks of one OpenAI chat completion stream, written as text; with include_usage each
    carries `"usage": null` (the last, with `choices: []`, carries the usage)."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool):
        header = json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "system_fingerprint": None}, ensure_ascii=False)
        self.prefix = header[:-1] + ', "choices": ['
        self.suffix = '], "usage": null}' if include_usage else "]}"

    def chunk(self, index: int, delta: str, logprobs: str = "null", finish_reason: str | None = None) -> str:
        end = "null" if finish_reason is None else json.dumps(finish_reason)
        choice = f'{{"index": {index}, "delta": {delta}, "logprobs": {logprobs}, "finish_reason": {end}}}'
        return data_event(self.prefix + choice + self.suffix)

    def role(self, index: int) -> str:
        """A choice's first chunk."""
        return self.chunk(index, '{"role": "assistant", "content": ""}')

    def text(self, index: int, text: str) -> str:
        return self.chunk(index, f'{{"content": {json.dumps(text, ensure_ascii=False)}}}')

    def characters(self, index: int, tokens: list[GeneratedToken]) -> str:
        """A chunk of characters with their log-probabilities (OpenAI's logprobs.content)."""
        text = json.dumps("".join(t.text for t in tokens), ensure_ascii=False)
        return self.chunk(index, f'{{"content": {text}}}', json.dumps(
            {"content": token_logprobs(tokens), "refusal": None}, ensure_ascii=False))

    def end(self, index: int, finish_reason: str) -> str:
        return self.chunk(index, "{}", finish_reason=finish_reason)


def token_logprobs(tokens: list[GeneratedToken]) -> list[dict[str, object]]:
    """OpenAI's per-token entries: a character, its log-probability and UTF-8 bytes, and the alternatives."""
    return [{"token": t.text, "logprob": t.logprob, "bytes": utf8(t.text),
             "top_logprobs": [{"token": a.text, "logprob": a.logprob, "bytes": utf8(a.text)} for a in t.top]}
            for t in tokens]
