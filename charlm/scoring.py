"""Scoring a text: each character's log-probability given the characters before it.

A model with a bounded context (GPT) reads a text longer than its context through a sliding
window: windows of the whole context, each `stride` characters after the one before (the last
one aligned with the end of the text), each scoring only the characters no earlier window
scored. So every character after the first window sees at least `context - stride` characters
before it, and at most `context` (with the default stride of half the context, as far back as
decoding sees after it re-encodes). Recurrent models carry their state from chunk to chunk:
every character sees the whole text before it. Windows are scored in batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from charlm.models import CharModel

RECURRENT_CHUNK = 4096  # characters a recurrent model reads per call (its state carried across)
WINDOW_BATCH = 32  # windows per forward pass


@dataclasses.dataclass(frozen=True)
class Scores:
    """Entry i is about character i + 1 of the text (the first character has no context)."""

    logprobs: np.ndarray  # (N - 1,) float32
    ranks: np.ndarray  # (N - 1,) int64: 1 + how many characters the model found more likely
    top_ids: np.ndarray  # (N - 1, k) int64: the k most likely characters, most likely first
    top_logprobs: np.ndarray  # (N - 1, k) float32: theirs, the same floats as in `logprobs`

    @property
    def total(self) -> float:
        return float(self.logprobs.astype(np.float64).sum())


def default_stride(context: int) -> int:
    return max(1, context // 2)


def window_plan(targets: int, context: int, stride: int) -> list[tuple[int, int]]:
    """(start, new) for each window over a text with `targets` characters to score: the window's
    inputs are characters [start, start + context) and it scores its last `new` targets."""
    if targets <= context:
        return [(0, targets)]
    plan, scored, start = [], 0, 0
    while scored < targets:
        start = min(start, targets - context)  # the last window ends with the text
        plan.append((start, start + context - scored))
        scored = start + context
        start += stride
    return plan


@torch.no_grad()
def score(model: CharModel, ids: Tensor, top_n: int = 0, window: int | None = None, stride: int | None = None,
          progress: Callable[[int], None] | None = None) -> Scores:
    """The log-probability of every character of ids (N,) int64 after the first, and with `top_n`
    the most likely characters at each place. A model with a bounded context reads windows of
    `window` characters (default: its context) `stride` apart (default: half the window); a
    recurrent one reads the whole text. `progress` hears how many characters were scored after
    each batch. The model is read in its own dtype; log-probabilities come in float32."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    parts: list[tuple[Tensor, Tensor]] = []  # (log-softmax rows (n, V), their targets (n,))
    done = 0
    for log_softmax, targets in _log_softmax_parts(model, ids, window, stride):
        parts.append((log_softmax, targets))
        done += targets.numel()
        if progress is not None:
            progress(done)
    if not parts:
        empty = np.zeros((0, top_n))
        return Scores(np.zeros(0, np.float32), np.zeros(0, np.int64), empty.astype(np.int64), empty.astype(np.float32))
    log_softmax = torch.cat([p[0] for p in parts])  # (N - 1, V) float32
    targets = torch.cat([p[1] for p in parts])  # (N - 1,)
    chosen = log_softmax.gather(1, targets[:, None])  # (N - 1, 1)
    ranks = (log_softmax > chosen).sum(dim=1) + 1  # (N - 1,)
    top_logprobs, top_ids = log_softmax.topk(min(top_n, log_softmax.size(1)), dim=1)  # (N - 1, k)
    return Scores(chosen.squeeze(1).cpu().numpy(), ranks.cpu().numpy(), top_ids.cpu().numpy(),
                  top_logprobs.cpu().numpy())


def _log_softmax_parts(model: CharModel, ids: Tensor, window: int | None,
                       stride: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    """Log-softmax rows and their targets, in text order, batch by batch."""
    inputs, targets = ids[:-1], ids[1:]
    if model.carries_state:
        state = None
        for start in range(0, inputs.numel(), RECURRENT_CHUNK):
            chunk = inputs[start : start + RECURRENT_CHUNK][None]  # (1, C)
            logits, _, state = model.forward_carry(chunk, None, state)
            yield logits[0].float().log_softmax(dim=-1), targets[start : start + RECURRENT_CHUNK]
        return
    context = window or model.context_size
    assert context is not None, "a model without state carried between chunks has a bounded context"
    plan = window_plan(targets.numel(), context, min(context, stride or default_stride(context)))
    width = min(context, targets.numel())
    for first in range(0, len(plan), WINDOW_BATCH):
        batch = plan[first : first + WINDOW_BATCH]
        starts = torch.tensor([start for start, _ in batch], device=ids.device)
        positions = starts[:, None] + torch.arange(width, device=ids.device)  # (B, W)
        logits, _ = model(inputs[positions])  # (B, W, V)
        log_softmax = logits.float().log_softmax(dim=-1)
        for row, (start, new) in enumerate(batch):
            yield log_softmax[row, width - new :], targets[start + width - new : start + width]
