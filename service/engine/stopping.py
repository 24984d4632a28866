"""When a sequence stops, and which of its characters a client may see yet."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class FinishReason(str, enum.Enum):
    LENGTH = "length"  # max_new_tokens reached
    STOP = "stop"  # a stop string was produced (it is not part of the output)
    END = "end"  # the grammar's text is complete (a character model's end of text: charlm.grammar)
    TIMEOUT = "timeout"  # the per-request time limit passed
    CANCELLED = "cancelled"  # the client went away, or the server is shutting down
    ERROR = "error"  # the engine failed; the message says why


class StopMatcher(Generic[T]):
    """Finds stop strings in generated text, OpenAI style.

    Characters arrive one at a time with a payload (the engine's per-character
    record). A character is released as soon as it can no longer be the start
    of a stop string; a stop string spanning several steps is found; the stop
    string itself is never released.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.held: list[tuple[str, T]] = []

    def push(self, char: str, payload: T) -> tuple[list[T], bool]:
        """Add one character; returns (payloads released now, whether a stop string matched)."""
        self.held.append((char, payload))
        if not self.stops:
            return self._release(len(self.held)), False
        text = "".join(c for c, _ in self.held)
        matches = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if matches:
            released = self._release(min(matches))
            self.held.clear()
            return released, True
        return self._release(len(text) - self._longest_open_suffix(text)), False

    def flush(self) -> list[T]:
        """Everything still held back, for when the sequence ends without a stop."""
        return self._release(len(self.held))

    def _longest_open_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that some stop string starts with."""
        for length in range(min(len(text), max(map(len, self.stops)) - 1), 0, -1):
            suffix = text[-length:]
            if any(stop.startswith(suffix) for stop in self.stops):
                return length
        return 0

    def _release(self, count: int) -> list[T]:
        released = [payload for _, payload in self.held[:count]]
        del self.held[:count]
        return released
