"""Choosing the next character: one place for every caller that generates.

Each row of a batch has its own temperature, top-k, top-p and random generator,
so a seeded sequence draws the same characters whatever else shares its batch.
The uniform number behind each draw comes from the row's own CPU generator, so
it is also the same on every device.
"""

from __future__ import annotations

import dataclasses
import random

import torch
from torch import Tensor

MAX_SEED = 2**63 - 1
MAX_TOP_K = 2**31 - 1
MIN_TEMPERATURE = 1e-4  # below this, sampling is argmax in all but name


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy argmax; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature < float("inf"):
            raise ValueError("temperature must be a finite number >= 0")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [0, {MAX_TOP_K}] (0 switches it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}]")


def make_generator(seed: int | None) -> tuple[torch.Generator, int]:
    """A CPU generator for one sequence, and the seed it used (drawn when None)."""
    if seed is None:
        seed = random.SystemRandom().randrange(MAX_SEED)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator, seed


@dataclasses.dataclass(frozen=True)
class SamplingBatch:
    """The sampling parameters of a batch as (B,) tensors, on the logits' device."""

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor

    @classmethod
    def of(cls, params: list[SamplingParams], device: torch.device | str) -> SamplingBatch:
        return cls(
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
        )


def filtered_sorted_probs(logits: Tensor, batch: SamplingBatch) -> tuple[Tensor, Tensor]:
    """Probabilities after temperature, top-k and top-p, sorted in descending order.

    Returns (probs, order), both (B, V): probs[b, r] belongs to character order[b, r].
    Rows are normalised; filtered-out characters have probability 0.
    """
    # Greedy rows (0) are decided by argmax later; a floor keeps tiny temperatures finite.
    temperature = torch.where(batch.temperature > 0, batch.temperature.clamp(min=MIN_TEMPERATURE), 1.0)
    scaled = logits.float() / temperature[:, None]  # (B, V)
    sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
    ranks = torch.arange(logits.size(-1), device=logits.device)[None, :]  # (1, V)
    k = torch.where(batch.top_k > 0, batch.top_k, logits.size(-1))
    sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a character when the
    # mass before it already does. The most likely character always stays.
    # Rows with top_p 1.0 skip the filter: round-off in the sum must not cut their tail.
    mass_before = probs.cumsum(dim=-1) - probs
    cut = (mass_before >= batch.top_p[:, None]) & (batch.top_p[:, None] < 1.0)
    probs = probs.masked_fill(cut, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True), order


def sample(
    logits: Tensor, batch: SamplingBatch, generators: list[torch.Generator]
) -> tuple[Tensor, Tensor]:
    """Draw one character per row from logits (B, V).

    Returns (ids, logprobs), both (B,): the chosen characters and their
    log-probabilities under the model's unmodified distribution.
    """
    probs, order = filtered_sorted_probs(logits, batch)
    # One uniform number per row from that row's generator, drawn on the CPU.
    uniform = torch.cat([torch.rand(1, generator=g) for g in generators]).to(logits.device)  # (B,)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    rank = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:]).clamp(max=logits.size(-1) - 1)  # (B, 1)
    drawn = order.gather(1, rank).squeeze(1)  # (B,)
    ids = torch.where(batch.temperature > 0, drawn, logits.argmax(dim=-1))
    logprobs = logits.float().log_softmax(dim=-1).gather(1, ids[:, None]).squeeze(1)
    return ids, logprobs
