"""Choosing the next character: one place for every caller that generates.

Each row of a batch has its own parameters (`SamplingParams`), held as tensors on the
logits' device (`SamplingRows`), so one call samples every row with a few tensor
operations and no per-row Python: logit bias and penalties (`charlm.logit_controls`), the
grammar (`charlm.grammar`), temperature, top-k, top-p, min-p and typical-p, then the draw. The uniform number
behind a row's i-th draw is a hash of (seed, i) (`charlm.noise`): the same on every
device and whatever else shares the batch, so the whole draw fits in a CUDA graph.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from charlm.grammar import GrammarTable, end_flags
from charlm.logit_controls import adjust_logits, typical_keep
from charlm.noise import mix32, noise_key, uniform_noise
from charlm.sampling_params import MAX_SEED, MAX_TOP_K, MIN_TEMPERATURE, SamplingParams, resolve_seed
from charlm.sampling_rows import SamplingRows

__all__ = [
    "MAX_SEED", "MAX_TOP_K", "MIN_TEMPERATURE", "Draw", "SamplingParams", "SamplingRows", "filtered_sorted_probs",
    "mix32", "noise_key", "resolve_seed", "sample", "uniform_noise",
]


def filtered_sorted_probs(logits: Tensor, rows: SamplingRows, controls: bool = True,
                          filters: bool = True) -> tuple[Tensor, Tensor]:
    """Probabilities after temperature, top-k, top-p and (with `controls`) min-p and typical-p,
    sorted in descending order; `filters` as `sample`'s.

    Returns (probs, order), both (B, V): probs[b, r] belongs to character order[b, r].
    Rows are normalised; filtered-out characters have probability 0.
    """
    if not filters and not controls:
        sorted_logits, order = (logits / rows.temperature[:, None]).sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        return probs / probs.sum(dim=-1, keepdim=True), order  # as below, where nothing was cut
    # Greedy rows (0) are decided by argmax later; a floor keeps tiny temperatures finite.
    temperature = torch.where(rows.temperature > 0, rows.temperature.clamp(min=MIN_TEMPERATURE), 1.0)
    scaled = logits.float() / temperature[:, None]  # (B, V)
    sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
    ranks = torch.arange(logits.size(-1), device=logits.device)[None, :]  # (1, V)
    k = torch.where(rows.top_k > 0, rows.top_k, logits.size(-1))
    sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a character when the
    # mass before it already does. The most likely character always stays, even for a
    # top_p so small (5e-324) that float32 holds it as 0.
    # Rows with top_p 1.0 skip the filter: round-off in the sum must not cut their tail.
    mass_before = probs.cumsum(dim=-1) - probs
    cut = (mass_before >= rows.top_p[:, None]) & (rows.top_p[:, None] < 1.0) & (ranks > 0)
    if controls:  # min-p: at least min_p times the most likely character's probability
        cut |= probs < rows.min_p[:, None] * probs[:, :1]
    probs = probs.masked_fill(cut, 0.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    if controls:  # renormalised only where typical-p cut something: other rows stay bit for bit
        typical = probs * typical_keep(probs, rows.typical_p)
        probs = torch.where(rows.typical_p[:, None] < 1.0, typical / typical.sum(dim=-1, keepdim=True), probs)
    return probs, order


@dataclasses.dataclass(frozen=True)
class Draw:
    ids: Tensor  # (B,) the chosen characters
    logprobs: Tensor  # (B,) their log-probabilities under the model's unmodified distribution
    log_softmax: Tensor  # (B, V) float32, that distribution, for callers that report alternatives
    ends: Tensor | None = None  # (B,) float32 `charlm.grammar` end flags, when a grammar table was given


def sample(logits: Tensor, rows: SamplingRows, counts: Tensor | None = None, controls: bool = True,
           grammar: GrammarTable | None = None, filters: bool = True) -> Draw:
    """Draw one character per row from logits (B, V), and count the draw in `rows.drawn` and in
    the character tables (only for the rows where `counts`, (B,) bool, is true, when given).

    `controls` False skips logit bias, penalties, min-p and typical-p (and the tables): for a
    batch where no row uses them, whose rows then come out exactly as with them. With `grammar`,
    each row draws among the characters its grammar state allows (after the penalties, before
    temperature and the filters) and moves on; rows in state 0 come out exactly as without it.
    `filters` False says that no row is greedy, floors its temperature, or uses top-k or top-p
    (`SamplingParams.filtered`, known on the host): with `controls` False too, the draw skips the
    arithmetic that would leave such rows as they are (a CPU step pays for every operator).
    No host synchronisation and no data-dependent shapes: safe inside a CUDA graph.
    """
    logits = logits.float()  # (B, V); once: in bf16 this is a conversion
    adjusted = adjust_logits(logits, rows) if controls else logits  # (B, V)
    if grammar is not None:
        adjusted, following, ends_before = grammar.constrain(adjusted, rows.grammar_state)
    plain = not filters and not controls and grammar is None
    probs, order = filtered_sorted_probs(adjusted, rows, controls, filters=not plain)
    uniform = uniform_noise(rows.key, rows.drawn)  # (B,)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    rank = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:]).clamp(max=logits.size(-1) - 1)  # (B, 1)
    drawn = order.gather(1, rank).squeeze(1)  # (B,)
    ids = drawn if plain else torch.where(rows.temperature > 0, drawn, adjusted.argmax(dim=-1))
    log_softmax = logits.log_softmax(dim=-1)  # (B, V)
    rows.drawn.add_(1 if counts is None else counts)
    if controls:
        rows.count(ids, counts)
    ends = None
    if grammar is not None:
        ends = end_flags(ends_before, grammar.advance(rows.grammar_state, following, ids, counts))
    return Draw(ids, log_softmax.gather(1, ids[:, None]).squeeze(1), log_softmax, ends)
