"""Requests, the events they receive, and the per-sequence bookkeeping of the engine."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from charlm.grammar import Automaton
from charlm.sampling import SamplingParams, resolve_seed
from charlm.scoring import Scores
from charlm.vocab import Vocab
from service.engine.stopping import FinishReason, StopMatcher

logger = logging.getLogger(__name__)


# Named tuples rather than frozen dataclasses: one is made per character of every sequence,
# on the engine thread, and a tuple is several times cheaper to build.
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


def prompt_tokens(ids: list[int], scores: Scores, vocab: Vocab) -> tuple[PromptToken, ...]:
    """The prompt's characters with their scores (the first one unscored)."""
    chars = vocab.chars
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
    text: str  # everything released to the client, stop string excluded
    generated_tokens: int  # characters the model produced, a matched stop string included
    prompt_tokens: int
    seed: int
    queued_s: float
    first_char_s: float | None  # from submission to the first generated character
    total_s: float
    error: str | None = None
    prompt_logprobs: tuple[PromptToken, ...] | None = None  # when the request asked for them


Event = GeneratedToken | Finished


@dataclasses.dataclass(eq=False)
class GenerationRequest:
    """One sequence to generate.

    `on_events` is called from the engine thread, at most once per step, with the
    events since the last call in order (released characters, then Finished if it
    ended): every `stream_interval` characters, or only at the end when it is 0.
    It must be quick and thread-safe.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    on_events: Callable[[list[Event]], None]
    stop: tuple[str, ...] = ()
    top_n: int = 0  # also report this many most likely characters at each step
    grammar: Automaton | None = None  # generate only texts it accepts (the front end checked it)
    prompt_logprobs: int | None = None  # score the prompt, with this many alternatives per character
    stream_interval: int = 1  # deliver every this many characters; 0: only when the sequence ends
    timeout_s: float | None = None
    request_id: str = ""
    cancelled: bool = False
    submitted_at: float = dataclasses.field(default_factory=time.monotonic)
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
    def inter_char(self, seconds: float) -> None: ...
    def chars(self, count: int) -> None: ...
    def cancelled(self) -> None: ...


class Row:
    """Host-side bookkeeping of one active sequence (one row of the batch).

    Events wait in `outbox` until the engine delivers them at the end of the step.
    """

    def __init__(self, request: GenerationRequest, vocab: Vocab, admitted_at: float):
        self.request = request
        self.vocab = vocab
        self.seed = resolve_seed(request.params.seed)
        self.slot = -1  # its row in the decoder, once admitted
        self.done = False
        self.matcher: StopMatcher[GeneratedToken] = StopMatcher(request.stop)
        self.chars = vocab.chars
        self.max_new_tokens = request.max_new_tokens
        self.admitted_at = admitted_at
        self.last_char_at: float | None = None
        self.first_char_s: float | None = None
        self.produced = 0
        self.text: list[str] = []
        self.outbox: list[Event] = []
        self.prompt_logprobs: tuple[PromptToken, ...] | None = None  # set at admission when asked for

    def advance(
        self, char_id: int, logprob: float, top: tuple[Alternative, ...], now: float, metrics: EngineMetrics
    ) -> FinishReason | None:
        """Take the next sampled character; returns why the sequence ends, if it does.

        It runs for every character of every sequence on the engine thread: the common
        case (no stop strings) takes a short path.
        """
        last = self.last_char_at
        if last is None:
            self.first_char_s = now - self.request.submitted_at
            metrics.first_char(self.first_char_s)
        else:
            metrics.inter_char(now - last)
        self.last_char_at = now
        produced = self.produced = self.produced + 1
        text = self.chars[char_id]
        token = GeneratedToken(produced, char_id, text, logprob, top)
        if self.matcher.stops:
            released, stopped = self.matcher.push(text, token)
            self.emit(released)
            if stopped:
                return FinishReason.STOP
        else:
            self.text.append(text)
            self.outbox.append(token)
        if produced >= self.max_new_tokens:
            return FinishReason.LENGTH
        return None

    def emit(self, tokens: list[GeneratedToken]) -> None:
        self.text.extend(token.text for token in tokens)
        self.outbox.extend(tokens)

    def finish(self, reason: FinishReason, now: float, error: str | None = None) -> None:
        """End the sequence: held-back characters are released unless a stop string matched."""
        self.done = True
        if reason is not FinishReason.STOP:
            self.emit(self.matcher.flush())
        self.outbox.append(Finished(
            reason=reason,
            text="".join(self.text),
            generated_tokens=self.produced,
            prompt_tokens=len(self.request.prompt_ids),
            seed=self.seed,
            queued_s=self.admitted_at - self.request.submitted_at,
            first_char_s=self.first_char_s,
            total_s=now - self.request.submitted_at,
            error=error,
            prompt_logprobs=self.prompt_logprobs,
        ))

    def deliver(self) -> None:
        """Hand this step's events to the request; a failing callback cancels only its request."""
        events = self.outbox
        if not events or (not self.done and not 0 < self.request.stream_interval <= len(events)):
            return
        self.outbox = []
        try:
            self.request.on_events(events)
        except Exception:
            logger.exception("request %s: delivering events failed; cancelling it", self.request.request_id)
            self.request.cancel()
