"""Requests, the events they receive, and the per-sequence bookkeeping of the engine."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from charlm.grammar import Automaton
from charlm.sampling_params import SamplingParams, resolve_seed
from charlm.scoring import Scores
from service.engine.stopping import FinishReason, StopMatcher

logger = logging.getLogger(__name__)


# Named tuples rather than frozen dataclasses: where per-character events are wanted one by one
# (`service.engine.events.CallbackSink`, non-streaming answers), a tuple is several times cheaper.
class Alternative(NamedTuple):
    id: int
    text: str
    logprob: float


class GeneratedToken(NamedTuple):
    position: int  # 1-based, among the characters this request generated
    id: int
    text: str
    logprob: float  # under the model's unmodified distribution
    top: tuple[Alternative, ...] = ()  # the request's top_n most likely characters at this step


class PromptToken(NamedTuple):
    """A prompt character as the model scored it (GenerationRequest.prompt_logprobs)."""

    id: int
    text: str
    logprob: float | None  # None for the first character, which has no context
    rank: int | None  # 1 + how many characters the model found more likely there
    top: tuple[Alternative, ...] = ()


def prompt_tokens(ids: list[int], scores: Scores, chars: list[str]) -> tuple[PromptToken, ...]:
    """The prompt's characters with their scores (the first one unscored)."""
    tokens = [PromptToken(ids[0], chars[ids[0]], None, None)]
    logprobs, ranks = scores.logprobs.tolist(), scores.ranks.tolist()
    top_ids, top_logprobs = scores.top_ids.tolist(), scores.top_logprobs.tolist()
    for i, char_id in enumerate(ids[1:]):
        top = tuple(Alternative(a, chars[a], lp) for a, lp in zip(top_ids[i], top_logprobs[i], strict=True))
        tokens.append(PromptToken(char_id, chars[char_id], logprobs[i], ranks[i], top))
    return tuple(tokens)


@dataclasses.dataclass(frozen=True)
class Finished:
    reason: FinishReason
    text: str  # everything released to the client, stop string excluded ("" as the engine sends it)
    generated_tokens: int  # characters the model produced, a matched stop string included
    prompt_tokens: int
    seed: int
    queued_s: float
    first_char_s: float | None  # from submission to the first generated character
    total_s: float
    error: str | None = None
    key: int = -1  # the request's key, and the front end it came from
    client: int = 0
    prompt_logprobs: tuple[PromptToken, ...] | None = None  # when the request asked for them


Event = GeneratedToken | Finished


@dataclasses.dataclass(eq=False)
class GenerationRequest:
    """One sequence to generate.

    What it produces goes to the engine's sink, every step, for all sequences at once
    (`service.engine.events`). `on_events`, for callers in the engine's own process, is called by a
    `CallbackSink` with each step's events of this request (released characters, then Finished if
    it ended); it must be quick and thread-safe. `key` names the request in the sink's events
    (given by the caller, or by the engine when -1), `client` the front end it came from.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    on_events: Callable[[list[Event]], None] | None = None
    stop: tuple[str, ...] = ()
    top_n: int = 0  # also report this many most likely characters at each step
    grammar: Automaton | None = None  # generate only texts it accepts (the front end checked it)
    prompt_logprobs: int | None = None  # score the prompt, with this many alternatives per character
    timeout_s: float | None = None
    request_id: str = ""
    cancelled: bool = False
    submitted_at: float = dataclasses.field(default_factory=time.monotonic)
    key: int = -1
    client: int = 0
    # Set by an engine in another process, to hear of a cancellation.
    on_cancel: Callable[[], None] | None = dataclasses.field(default=None, repr=False)

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (thread-safe)."""
        if self.cancelled:
            return
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()

    def ended_early(self, now: float) -> FinishReason | None:
        """Cancelled, or out of time, before its next character."""
        if self.cancelled:
            return FinishReason.CANCELLED
        if self.timeout_s is not None and now >= self.submitted_at + self.timeout_s:
            return FinishReason.TIMEOUT
        return None


class EngineMetrics:
    """What an engine reports; the service plugs Prometheus in. No-ops by default."""

    def batch_changed(self, active: int, queued: int) -> None: ...
    def first_char(self, seconds: float) -> None: ...
    def inter_chars(self, seconds: list[float]) -> None: ...
    def chars(self, count: int) -> None: ...
    def cancelled(self) -> None: ...


Held = tuple[int, float, "tuple[list[int], list[float]] | None"]  # a held-back character: id, log-prob, alternatives


class Row:
    """Host-side bookkeeping of one active sequence (one row of the batch). The batch reads and
    writes its counters directly: this runs for every row at every step."""

    __slots__ = (
        "admitted_at",
        "client",
        "constrained",
        "done",
        "first_char_s",
        "key",
        "last_char_at",
        "limit",
        "matcher",
        "produced",
        "prompt_logprobs",
        "request",
        "seed",
        "slot",
        "top_n",
    )

    def __init__(self, request: GenerationRequest, admitted_at: float):
        self.request = request
        self.key, self.client = request.key, request.client
        self.seed = resolve_seed(request.params.seed)
        self.slot = -1  # its row in the decoder, once admitted
        self.done = False
        # Only rows with stop strings hold characters back; the others release each one at once.
        self.matcher: StopMatcher[Held] | None = StopMatcher(request.stop) if any(
            request.stop) else None
        self.limit = request.max_new_tokens
        self.top_n = request.top_n
        self.admitted_at = admitted_at
        self.last_char_at: float | None = None
        self.first_char_s: float | None = None
        self.produced = 0
        self.constrained = request.grammar is not None  # a grammar may end its text
        self.prompt_logprobs: tuple[PromptToken, ...] | None = None  # set at admission when asked for

    def finished(self, reason: FinishReason, now: float, error: str | None = None) -> Finished:
        """The sequence's end (the text is filled in by whoever collects its characters)."""
        self.done = True
        return Finished(
            reason=reason, text="", generated_tokens=self.produced, prompt_tokens=len(self.request.prompt_ids),
            seed=self.seed, queued_s=self.admitted_at - self.request.submitted_at, first_char_s=self.first_char_s,
            total_s=now - self.request.submitted_at, error=error, key=self.key, client=self.client,
            prompt_logprobs=self.prompt_logprobs,
        )
