"""The sampling controls beyond temperature, top-k and top-p, for all rows at once.

`adjust_logits` applies logit bias and the penalties to the logits; `typical_keep` decides
typical sampling's set. Each is exact arithmetic at a row's neutral values (adding 0,
multiplying by 1, keeping everything), so a row that uses none of them comes out bit for bit
as if they had not run: whether a step runs them can depend on the other rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from charlm.sampling_rows import SamplingRows


def adjust_logits(logits: Tensor, rows: SamplingRows) -> Tensor:
    """logits (B, V) float32 with each row's logit bias and penalties applied, in that order."""
    x = logits + rows.bias
    repetition = rows.repetition[:, None]  # (B, 1)
    penalized = torch.where(x < 0, x * repetition, x / repetition)  # CTRL: away from zero
    x = torch.where(rows.seen > 0, penalized, x)
    share = rows.seen / rows.seen.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (B, V)
    x = x - rows.relative_frequency[:, None] * share
    x = x - rows.frequency[:, None] * rows.produced
    return x - rows.presence[:, None] * (rows.produced > 0)


def typical_keep(probs: Tensor, typical_p: Tensor) -> Tensor:
    """Typical sampling's set over probs (B, V) (normalised, any order): the characters whose
    surprise is closest to the distribution's entropy, nearest first, until their mass reaches
    typical_p (B,). A (B, V) bool mask; rows with typical_p 1 keep every character."""
    log_p = probs.log()  # (B, V); -inf where the probability is 0
    entropy = -(probs * log_p).nan_to_num(nan=0.0).sum(dim=-1, keepdim=True)  # (B, 1)
    distance = (-log_p - entropy).abs()  # (B, V); inf for filtered-out characters
    _, nearest = distance.sort(dim=-1)  # (B, V)
    mass = probs.gather(1, nearest)  # (B, V)
    # The nearest always stays, even for a typical_p that float32 holds as 0.
    first = torch.arange(probs.size(-1), device=probs.device)[None, :] == 0  # (1, V)
    keep_sorted = ((mass.cumsum(dim=-1) - mass) < typical_p[:, None]) | first
    keep = torch.zeros_like(keep_sorted).scatter(1, nearest, keep_sorted)
    return keep | (typical_p[:, None] >= 1.0)
