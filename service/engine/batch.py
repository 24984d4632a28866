"""The running batch of one engine: sequences in the rows of a `SlotDecoder`.

Touched only by the engine thread. `admit` prefills each new request into the
decoder's next free row. `step` launches one decode step for every row, then
processes the results of an earlier step: each row takes its character, and the
rows that finished leave at once (the decoder moves the last row into the hole,
and `rows` follows). On CUDA the results are processed one step late, so the
GPU computes a step while the host handles the previous one.

What the rows release goes into a `StepEventsBuilder` as arrays: an ordinary row
releases the character it drew, so a step's ordinary rows go in as slices of the
step's results; only rows with stop strings, alternatives, a grammar or an end
take a Python path of their own. A grammar (`charlm.grammar`) ends a row's text
through the step's end flags: before the drawn character (the model would rather
stop) or with it (no way on).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from charlm.decoding import NewSequence, SlotDecoder
from charlm.grammar import COMPLETES, ENDS_BEFORE
from charlm.scoring import score
from charlm.step_results import PendingStep, StepResult
from service.engine.events import StepEventsBuilder
from service.engine.sequences import EngineMetrics, GenerationRequest, Held, Row, prompt_tokens
from service.engine.stopping import FinishReason

logger = logging.getLogger(__name__)


class RunningBatch:
    """`changed` is called whenever rows join or leave, before any of their events go out (so that
    a client that has its answer never sees gauges from before it)."""

    def __init__(self, decoder: SlotDecoder, chars: list[str], metrics: EngineMetrics, out: StepEventsBuilder,
                 changed: Callable[[], None] = lambda: None):
        self.decoder = decoder
        self.chars = chars  # the vocabulary, for stop strings
        self.metrics = metrics
        self.out = out
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
            row = Row(request, now)
            if request.prompt_logprobs is not None and not self._score_prompt(row, now):
                continue
            if request.max_new_tokens == 0:
                self.out.finish(row.finished(FinishReason.LENGTH, now))
                continue
            groups.setdefault(self.decoder.prompt_length(request.prompt_ids), []).append(row)
        for group in groups.values():
            sequences = [NewSequence(r.request.prompt_ids, r.request.params, r.seed, r.top_n > 0, r.request.grammar)
                         for r in group]
            try:
                first = self.decoder.add_group(sequences)
            except Exception as exc:
                logger.exception("requests %s: prefill failed", ", ".join(r.request.request_id for r in group))
                for row in group:
                    self.out.finish(row.finished(FinishReason.ERROR, now, f"prefill failed: {exc}"))
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
            self.out.finish(row.finished(FinishReason.ERROR, now, f"scoring the prompt failed: {exc}"))
            return False
        row.prompt_logprobs = prompt_tokens(ids, scores, self.chars)
        return True

    def step(self) -> None:
        """Drop the rows that ended early, launch a step, and process what is due."""
        now = time.monotonic()
        ended = [r for r in self.rows if r.request.ended_early(now)]
        for row in ended:
            self._retire(row, row.request.ended_early(now) or FinishReason.CANCELLED, now)
        if ended:
            self.changed()
        if self.rows:
            self.pending.append((self.decoder.launch(), list(self.rows)))
            self.max_batch_seen = max(self.max_batch_seen, len(self.rows))
        while self.pending and (len(self.pending) > self.depth or not self.rows):
            step, rows = self.pending.popleft()
            self._process(step.result(), rows, step.drew)

    def _process(self, result: StepResult, rows: list[Row], drew: list[bool] | None) -> None:
        """Each row takes its character: ordinary rows in bulk, the others one by one; finished rows
        leave."""
        now = time.monotonic()
        plain: list[int] = []  # rows that release the character they drew, and go on
        special: list[int] = []  # rows with stop strings, alternatives or a grammar, or that end now
        gaps: list[float] = []
        ends = result.ends  # the grammar's end flags, when a row has a grammar
        retired = False
        for i, row in enumerate(rows):
            if row.done or (drew is not None and not drew[i]):  # gone, or still feeding its prompt
                continue
            if ends is not None and ends[i] == ENDS_BEFORE:  # the grammar's text ended before this draw
                self._retire(row, FinishReason.END, now)
                retired = True
                continue
            row.produced += 1
            if row.last_char_at is None:
                row.first_char_s = now - row.request.submitted_at
                self.metrics.first_char(row.first_char_s)
            else:
                gaps.append(now - row.last_char_at)
            row.last_char_at = now
            if row.matcher is None and not row.top_n and not row.constrained and row.produced < row.limit:
                plain.append(i)
            else:
                special.append(i)
        if gaps:
            self.metrics.inter_chars(gaps)
        self.metrics.chars(len(plain) + len(special))
        ids, logprobs = result.id_array, result.logprob_array  # (n,)
        if plain:
            index = np.array(plain)
            keys = np.array([rows[i].key for i in plain], np.int64)
            clients = np.array([rows[i].client for i in plain], np.int32)
            self.out.add(keys, clients, np.ones(len(plain), np.int32), ids[index], logprobs[index])
        for i in special:
            complete = ends is not None and ends[i] == COMPLETES
            retired |= self._advance(rows[i], int(ids[i]), float(logprobs[i]), result, i, now, complete)
        if retired:
            self.changed()

    def _advance(self, row: Row, char_id: int, logprob: float, result: StepResult, i: int, now: float,
                 complete: bool = False) -> bool:
        """A row off the common path takes its character; True when it finished (`complete`: its
        grammar's text is complete with this character)."""
        top = None
        if row.top_n:
            top_ids, top_logprobs = result.top_arrays(np.array([i]), row.top_n)
            top = (top_ids[0].tolist(), top_logprobs[0].tolist())
        if row.matcher is not None:
            released, stopped = row.matcher.push(self.chars[char_id], (char_id, logprob, top))
            self._release(row, released)
            if stopped:
                self._retire(row, FinishReason.STOP, now)
                return True
        else:
            self._release(row, [(char_id, logprob, top)])
        if complete:
            self._retire(row, FinishReason.END, now)
            return True
        if row.produced >= row.limit:
            self._retire(row, FinishReason.LENGTH, now)
            return True
        return False

    def _release(self, row: Row, held: list[Held]) -> None:
        """One row's released characters, as a segment of their own."""
        if not held:
            return
        ids = np.array([h[0] for h in held], np.int32)
        logprobs = np.array([h[1] for h in held], np.float32)
        first = self.out.add(np.array([row.key], np.int64), np.array([row.client], np.int32),
                             np.array([len(held)], np.int32), ids, logprobs)
        with_top = [j for j, h in enumerate(held) if h[2] is not None]
        if with_top:
            top_ids = np.array([held[j][2][0] for j in with_top], np.int32)  # type: ignore[index]
            top_logprobs = np.array([held[j][2][1] for j in with_top], np.float32)  # type: ignore[index]
            self.out.add_top(np.array(with_top, np.int32) + first, top_ids, top_logprobs)

    def _retire(self, row: Row, reason: FinishReason, now: float, error: str | None = None) -> None:
        """Finish `row` (held-back characters are released unless a stop string matched) and free
        its decoder row; the last row moves into it."""
        if reason is FinishReason.CANCELLED:
            self.metrics.cancelled()
        if row.matcher is not None and reason is not FinishReason.STOP:
            self._release(row, row.matcher.flush())
        self.out.finish(row.finished(reason, now, error))
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
            if row.matcher is not None and reason is not FinishReason.STOP:
                self._release(row, row.matcher.flush())
            self.out.finish(row.finished(reason, now, error))
