"""Choosing the next character: one place for every caller that generates.

Each row of a batch has its own temperature, top-k, top-p and seed, held as (B,)
tensors on the logits' device, so one call samples every row with a few tensor
operations and no per-row Python. The uniform number behind a row's i-th draw is
a hash of (seed, i) computed with exact integer arithmetic: it is the same on
every device and whatever else shares the batch, and it needs no generator
object, so the whole draw can be captured in a CUDA graph.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch
from torch import Tensor

MAX_SEED = 2**63 - 1
MAX_TOP_K = 2**31 - 1
MIN_TEMPERATURE = 1e-4  # below this, sampling is argmax in all but name
MASK32 = 0xFFFFFFFF


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


def resolve_seed(seed: int | None) -> int:
    """The seed a sequence draws with: its own, or a fresh random one (reported back to the client)."""
    return random.SystemRandom().randrange(MAX_SEED) if seed is None else seed


@dataclasses.dataclass(frozen=True)
class SamplingRows:
    """The sampling state of a batch, one row per sequence, on the logits' device.

    drawn counts the characters each row has drawn: it is the counter of its noise.
    The seeds themselves stay on the host; the device needs only their keys.
    """

    temperature: Tensor  # (B,) float32
    top_k: Tensor  # (B,) int64
    top_p: Tensor  # (B,) float32
    key: Tensor  # (B,) int64, the noise key of each row's seed
    drawn: Tensor  # (B,) int64

    @classmethod
    def zeros(cls, rows: int, device: torch.device | str) -> SamplingRows:
        def make(dtype: torch.dtype) -> Tensor:
            return torch.zeros(rows, dtype=dtype, device=device)

        return cls(make(torch.float32), make(torch.long), make(torch.float32).add_(1.0), make(torch.long),
                   make(torch.long))

    @classmethod
    def of(cls, params: list[SamplingParams], device: torch.device | str,
           seeds: list[int] | None = None) -> SamplingRows:
        """Rows for `params`, drawing with `seeds` (default: each one's own seed, else a random one)."""
        rows = cls.zeros(len(params), device)
        for row, p in enumerate(params):
            rows.set_row(row, p, resolve_seed(p.seed) if seeds is None else seeds[row])
        return rows

    def _tensors(self) -> list[Tensor]:
        return [self.temperature, self.top_k, self.top_p, self.key, self.drawn]

    def narrow(self, rows: int) -> SamplingRows:
        """Views of the first `rows` rows."""
        return SamplingRows(*(t[:rows] for t in self._tensors()))

    def set_row(self, row: int, params: SamplingParams, seed: int) -> None:
        """A new sequence in `row`: its parameters, its seed, nothing drawn yet."""
        values = (params.temperature, params.top_k, params.top_p, noise_key(seed), 0)
        for tensor, value in zip(self._tensors(), values, strict=True):
            tensor[row] = value

    def copy_row(self, source: int, target: int) -> None:
        for tensor in self._tensors():
            tensor[target] = tensor[source]


def noise_key(seed: int) -> int:
    """The 32-bit key of a seed's noise stream, computed once per sequence on the host."""
    key = 0
    for part in (seed & MASK32, seed >> 32):
        key = mix32(key ^ part ^ 0x9E3779B9)
    return key


def mix32(x: Any) -> Any:
    """An avalanching permutation of 32-bit values (xor-shift-multiply), for Python ints and for
    int64 tensors alike. The multipliers are below 2**31, so no product leaves int64: the result
    is exact on every device."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK32
    return x ^ (x >> 16)


def uniform_noise(key: Tensor, counter: Tensor) -> Tensor:
    """One number in [0, 1) per row from (key, counter), both (B,) int64; float32 (B,).

    A Weyl sequence through the hash (as SplitMix does): the i-th draw of a stream
    hashes key + i * 0x61C88647. 24 bits, the precision of float32: every value is
    exact, so CPU and GPU agree.
    """
    h = mix32((key + (counter & MASK32) * 0x61C88647) & MASK32)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def filtered_sorted_probs(logits: Tensor, rows: SamplingRows) -> tuple[Tensor, Tensor]:
    """Probabilities after temperature, top-k and top-p, sorted in descending order.

    Returns (probs, order), both (B, V): probs[b, r] belongs to character order[b, r].
    Rows are normalised; filtered-out characters have probability 0.
    """
    # Greedy rows (0) are decided by argmax later; a floor keeps tiny temperatures finite.
    temperature = torch.where(rows.temperature > 0, rows.temperature.clamp(min=MIN_TEMPERATURE), 1.0)
    scaled = logits.float() / temperature[:, None]  # (B, V)
    sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
    ranks = torch.arange(logits.size(-1), device=logits.device)[None, :]  # (1, V)
    k = torch.where(rows.top_k > 0, rows.top_k, logits.size(-1))
    sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a character when the
    # mass before it already does. The most likely character always stays.
    # Rows with top_p 1.0 skip the filter: round-off in the sum must not cut their tail.
    mass_before = probs.cumsum(dim=-1) - probs
    cut = (mass_before >= rows.top_p[:, None]) & (rows.top_p[:, None] < 1.0)
    probs = probs.masked_fill(cut, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True), order


@dataclasses.dataclass(frozen=True)
class Draw:
    ids: Tensor  # (B,) the chosen characters
    logprobs: Tensor  # (B,) their log-probabilities under the model's unmodified distribution
    log_softmax: Tensor  # (B, V) float32, that distribution, for callers that report alternatives


def sample(logits: Tensor, rows: SamplingRows, counts: Tensor | None = None) -> Draw:
    """Draw one character per row from logits (B, V), and count the draw in `rows.drawn`
    (only for the rows where `counts`, (B,) bool, is true, when given).

    No host synchronisation and no data-dependent shapes: safe inside a CUDA graph.
    """
    probs, order = filtered_sorted_probs(logits, rows)
    uniform = uniform_noise(rows.key, rows.drawn)  # (B,)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    rank = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:]).clamp(max=logits.size(-1) - 1)  # (B, 1)
    drawn = order.gather(1, rank).squeeze(1)  # (B,)
    ids = torch.where(rows.temperature > 0, drawn, logits.argmax(dim=-1))
    log_softmax = logits.float().log_softmax(dim=-1)  # (B, V)
    rows.drawn.add_(1 if counts is None else counts)
    return Draw(ids, log_softmax.gather(1, ids[:, None]).squeeze(1), log_softmax)
