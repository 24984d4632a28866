"""The running batch of one engine: sequences in the rows of a `SlotDecoder`.

Touched only by the engine thread. `admit` prefills each new request into the
decoder's next free row. `step` launches one decode step for every row, then
processes the results of an earlier step: each row takes its character, and the
rows that finished leave at once (the decoder moves the last row into the hole,
and `rows` follows). On CUDA the results are processed one step late, so the
GPU computes a step while the host handles the previous one.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import torch

from charlm.decoding import NewSequence, PendingStep, SlotDecoder, StepResult
from charlm.grammar import COMPLETES, ENDS_BEFORE
from charlm.scoring import score
from charlm.vocab import Vocab
from service.engine.sequences import Alternative, EngineMetrics, GenerationRequest, Row, prompt_tokens
from service.engine.stopping import FinishReason

logger = logging.getLogger(__name__)


class RunningBatch:
    """`changed` is called whenever rows join or leave, before any of their events go out (so that
    a client that has its answer never sees gauges from before it)."""

    def __init__(self, decoder: SlotDecoder, vocab: Vocab, metrics: EngineMetrics,
                 changed: Callable[[], None] = lambda: None):
        self.decoder = decoder
        self.vocab = vocab
        self.metrics = metrics
        self.changed = changed
        self.rows: list[Row] = []  # rows[i] is in the decoder's row i
        # Launched steps whose results wait, with the rows they advanced (in row order).
        self.pending: collections.deque[tuple[PendingStep, list[Row]]] = collections.deque()
        self.depth = 1 if decoder.fixed else 0  # steps launched ahead of the one processed
        self.max_batch_seen = 0  # largest batch stepped together, for tests and benchmarks

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.pending)

    def admit(self, requests: list[GenerationRequest]) -> None:
        """Prefill the requests into free rows, those whose prompts have one length together; a
        failing prefill ends only the requests it was for."""
        now = time.monotonic()
        groups: dict[int, list[Row]] = {}
        for request in requests:
            row = Row(request, self.vocab, now)
            if request.prompt_logprobs is not None and not self._score_prompt(row, now):  # issue 22: scoring
                continue
            if request.max_new_tokens == 0:
                row.finish(FinishReason.LENGTH, now)
                row.deliver()
                continue
            groups.setdefault(self.decoder.prompt_length(request.prompt_ids), []).append(row)
        for group in groups.values():
            sequences = [NewSequence(r.request.prompt_ids, r.request.params, r.seed, r.request.top_n > 0,
                                     r.request.grammar) for r in group]
            try:
                first = self.decoder.add_group(sequences)
            except Exception as exc:
                logger.exception("requests %s: prefill failed", ", ".join(r.request.request_id for r in group))
                for row in group:
                    row.finish(FinishReason.ERROR, now, f"prefill failed: {exc}")
                    row.deliver()
                continue
            for offset, row in enumerate(group):
                row.slot = first + offset
                self.rows.append(row)
        if requests:
            self.changed()

    def _score_prompt(self, row: Row, now: float) -> bool:
        """Score the row's prompt where the model runs (`charlm.scoring`: a sliding window past the
        model's context); False when that failed, and the row has ended with the reason."""
        ids = row.request.prompt_ids
        try:
            scores = score(self.decoder.model, torch.tensor(ids), row.request.prompt_logprobs or 0)
        except Exception as exc:
            logger.exception("request %s: scoring the prompt failed", row.request.request_id)
            row.finish(FinishReason.ERROR, now, f"scoring the prompt failed: {exc}")
            row.deliver()
            return False
        row.prompt_logprobs = prompt_tokens(ids, scores, self.vocab)
        return True

    def step(self) -> None:
        """Drop the rows that ended early, launch a step, and process what is due."""
        now = time.monotonic()
        ended = [r for r in self.rows if r.request.ended_early(now)]
        for row in ended:
            self._retire(row, row.request.ended_early(now) or FinishReason.CANCELLED, now)
        if ended:
            self.changed()
            for row in ended:
                row.deliver()
        if self.rows:
            self.pending.append((self.decoder.launch(), list(self.rows)))
            self.max_batch_seen = max(self.max_batch_seen, len(self.rows))
        while self.pending and (len(self.pending) > self.depth or not self.rows):
            step, rows = self.pending.popleft()
            self._process(step.result(), rows, step.drew)

    def _process(self, result: StepResult, rows: list[Row], drew: list[bool] | None) -> None:
        """Each row takes its character; finished rows leave; every row's events go out."""
        now = time.monotonic()
        ids, logprobs, ends, metrics = result.ids, result.logprobs, result.ends, self.metrics
        advanced, retired = 0, False
        for i, row in enumerate(rows):
            if row.done:  # finished after this step was launched: its character is not wanted
                continue
            if drew is not None and not drew[i]:  # still feeding its prompt
                continue
            if ends is not None and ends[i] == ENDS_BEFORE:  # issue 22: the grammar's text ended before it
                self._retire(row, FinishReason.END, now)
                retired = True
                continue
            top = self._alternatives(result, i, row.request.top_n) if row.request.top_n else ()
            reason = row.advance(ids[i], logprobs[i], top, now, metrics)
            if ends is not None and ends[i] == COMPLETES and reason is not FinishReason.STOP:
                reason = FinishReason.END  # issue 22: the grammar's text is complete with this character
            advanced += 1
            if reason is not None:
                self._retire(row, reason, now)
                retired = True
        metrics.chars(advanced)
        if retired:
            self.changed()
        for row in rows:
            row.deliver()

    def _alternatives(self, result: StepResult, index: int, n: int) -> tuple[Alternative, ...]:
        chars = self.vocab.chars
        return tuple(Alternative(i, chars[i], lp) for i, lp in result.top(index, n))

    def _retire(self, row: Row, reason: FinishReason, now: float, error: str | None = None) -> None:
        """Finish `row` and free its decoder row; the last row moves into it."""
        if reason is FinishReason.CANCELLED:
            self.metrics.cancelled()
        row.finish(reason, now, error)
        moved = self.decoder.remove(row.slot)
        last = self.rows.pop()
        if moved is not None:
            self.rows[row.slot] = last
            last.slot = row.slot

    def retire_all(self, reason: FinishReason, error: str | None = None) -> None:
        """End every sequence (shutdown, or a failed step whose state is not trusted)."""
        now = time.monotonic()
        rows, self.rows = self.rows, []
        self.pending.clear()
        self.decoder.clear()
        self.changed()
        for row in rows:
            row.finish(reason, now, error)
            row.deliver()
