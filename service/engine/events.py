"""What one turn of an engine produced, for every sequence at once, as arrays.

A step gives each active sequence at most a few characters: rather than a Python object per
character, a turn's output is one `StepEvents`: per sequence that released characters, a segment
(its key and how many characters), the characters' ids and log-probabilities in segment order,
the alternatives of the characters whose requests asked for them, and the sequences that ended.
An engine hands it to its sink; an engine process splits it by front end and sends each part as
one message (`service.engine.wire`); in this process, `CallbackSink` turns it into each request's
`GeneratedToken`s and `Finished` for callers that want per-request callbacks (tests, benches).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from service.engine.sequences import Alternative, Finished, GeneratedToken, GenerationRequest

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StepEvents:
    keys: np.ndarray  # (S,) int64: the request of each segment
    clients: np.ndarray  # (S,) int32: the front end each segment goes to
    counts: np.ndarray  # (S,) int32: characters in each segment
    ids: np.ndarray  # (C,) int32: the characters, segment after segment
    logprobs: np.ndarray  # (C,) float32
    top_index: np.ndarray  # (A,) int32: which characters (indices into ids) carry alternatives
    top_ids: np.ndarray  # (A, K) int32: their most likely characters, most likely first
    top_logprobs: np.ndarray  # (A, K) float32
    finished: list[Finished]  # sequences that ended, after their last characters above

    @classmethod
    def empty(cls, finished: list[Finished] | None = None) -> StepEvents:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32),
                   np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros((0, 0), np.int32),
                   np.zeros((0, 0), np.float32), finished or [])

    def __bool__(self) -> bool:
        return bool(len(self.keys) or self.finished)

    @functools.cached_property
    def id_list(self) -> list[int]:
        """The characters as Python ints, made once for everyone who reads them one by one."""
        return self.ids.tolist()

    @functools.cached_property
    def logprob_list(self) -> list[float]:
        return self.logprobs.tolist()

    @functools.cached_property
    def logprob_json(self) -> list[str]:
        """Each character's log-probability as JSON text, as `json.dumps` writes it: formatted in one
        call for the whole message (a list's repr formats its floats in C)."""
        if not len(self.logprobs):
            return []
        if np.isfinite(self.logprobs).all():
            return repr(self.logprob_list)[1:-1].split(", ")
        return [json.dumps(value) for value in self.logprob_list]

    def alternatives(self, chars: list[str], first: int = 0, count: int | None = None
                     ) -> dict[int, tuple[Alternative, ...]]:
        """The alternatives of characters [first, first + count) (default: all), by character index."""
        end = len(self.ids) if count is None else first + count
        out: dict[int, tuple[Alternative, ...]] = {}
        for row, index in enumerate(self.top_index.tolist()):
            if first <= index < end:
                out[index] = tuple(Alternative(i, chars[i], lp) for i, lp in
                                   zip(self.top_ids[row].tolist(), self.top_logprobs[row].tolist(), strict=True)
                                   if i >= 0)
        return out

    def for_client(self, client: int) -> StepEvents:
        """The part of these events that goes to one front end."""
        mine = self.clients == client  # (S,)
        if mine.all():
            finished = [f for f in self.finished if f.client == client]
            return self if len(finished) == len(self.finished) else dataclasses.replace(self, finished=finished)
        chars = np.repeat(mine, self.counts)  # (C,)
        kept_top = chars[self.top_index]  # (A,)
        new_index = np.cumsum(chars) - 1  # (C,) a kept character's index among the kept ones
        return StepEvents(
            self.keys[mine], self.clients[mine], self.counts[mine], self.ids[chars], self.logprobs[chars],
            new_index[self.top_index[kept_top]].astype(np.int32), self.top_ids[kept_top],
            self.top_logprobs[kept_top], [f for f in self.finished if f.client == client],
        )


class StepEventsBuilder:
    """Collects one turn's output: whole arrays from a step's ordinary rows, and segments added one
    by one for the rest (rows whose stop strings held characters back, prompt echoes)."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.tops: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (char index, ids, logprobs)
        self.chars = 0
        self.finished: list[Finished] = []

    def add(self, keys: np.ndarray, clients: np.ndarray, counts: np.ndarray, ids: np.ndarray,
            logprobs: np.ndarray) -> int:
        """Segments and their characters; returns the index of the first character added."""
        first = self.chars
        if len(keys):
            self.parts.append((keys, clients, counts, ids, logprobs))
            self.chars += len(ids)
        return first

    def add_top(self, char_index: np.ndarray, ids: np.ndarray, logprobs: np.ndarray) -> None:
        if len(char_index):
            self.tops.append((char_index, ids, logprobs))

    def finish(self, end: Finished) -> None:
        self.finished.append(end)

    def take(self) -> StepEvents:
        """Everything added since the last take."""
        parts, tops, finished = self.parts, self.tops, self.finished
        self.parts, self.tops, self.finished, self.chars = [], [], [], 0
        events = StepEvents.empty(finished)
        if parts:
            keys, clients, counts, ids, logprobs = (np.concatenate(column) for column in zip(*parts, strict=True))
            events.keys, events.clients = keys.astype(np.int64, copy=False), clients.astype(np.int32, copy=False)
            events.counts, events.ids = counts.astype(np.int32, copy=False), ids.astype(np.int32, copy=False)
            events.logprobs = logprobs.astype(np.float32, copy=False)
        if tops:
            width = max(t[1].shape[1] for t in tops)
            events.top_index = np.concatenate([t[0] for t in tops]).astype(np.int32)
            events.top_ids = np.concatenate([pad(t[1], width, -1) for t in tops]).astype(np.int32)
            events.top_logprobs = np.concatenate([pad(t[2], width, 0.0) for t in tops]).astype(np.float32)
        return events


def pad(values: np.ndarray, width: int, fill: float) -> np.ndarray:
    """(A, k) -> (A, width), filled on the right (ids with -1: no such alternative)."""
    if values.shape[1] == width:
        return values
    return np.pad(values, ((0, 0), (0, width - values.shape[1])), constant_values=fill)


class EventSink(Protocol):
    """Where an engine's output goes, called by the engine thread after every turn of its loop."""

    def accepted(self, requests: list[GenerationRequest]) -> None: ...

    def deliver(self, events: StepEvents) -> None: ...


class CallbackSink:
    """Each request's events to its own `on_events`, as `GeneratedToken`s and a `Finished` with the
    whole text: for callers in this process that want them one request at a time."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.requests: dict[int, tuple[GenerationRequest, list[str]]] = {}

    def accepted(self, requests: list[GenerationRequest]) -> None:
        for request in requests:
            self.requests[request.key] = (request, [])

    def deliver(self, events: StepEvents) -> None:
        stepped = {key: len(self.requests[key][1]) for key in set(events.keys.tolist()) if key in self.requests}
        per_key = tokens_by_key(events, self.chars, stepped)
        ended = {end.key: end for end in events.finished}
        for key, tokens in per_key.items():
            if (entry := self.requests.get(key)) is not None:
                entry[1].extend(t.text for t in tokens)
                if key not in ended:
                    call(entry[0], tokens)
        for key, end in ended.items():
            if (entry := self.requests.pop(key, None)) is not None:
                call(entry[0], [*per_key.get(key, []), dataclasses.replace(end, text="".join(entry[1]))])


def call(request: GenerationRequest, events: Sequence[GeneratedToken | Finished]) -> None:
    if request.on_events is None:
        return
    try:
        request.on_events(list(events))
    except Exception:  # a failing callback ends only its own request
        logger.exception("request %s: delivering events failed; cancelling it", request.request_id)
        request.cancel()


def tokens_by_key(events: StepEvents, chars: list[str], released: dict[int, int]) -> dict[int, list[GeneratedToken]]:
    """Each segment's characters as tokens, positioned after the `released` ones before them."""
    tops = events.alternatives(chars)
    ids, logprobs = events.ids.tolist(), events.logprobs.tolist()
    out: dict[int, list[GeneratedToken]] = {}
    start = 0
    for key, count in zip(events.keys.tolist(), events.counts.tolist(), strict=True):
        before = released.get(key, 0) + len(out.get(key, ()))
        out.setdefault(key, []).extend(
            GeneratedToken(before + j + 1, ids[c], chars[ids[c]], logprobs[c], tops.get(c, ()))
            for j, c in enumerate(range(start, start + count)))
        start += count
    return out
