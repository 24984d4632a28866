"""The sampling state of a batch: every row's parameters and counts as tensors on the device.

One row per sequence, written when a sequence arrives (`set_row`), moved with it
(`copy_row`), and read by `charlm.sampling.sample` for all rows at once. The
vocabulary is small, so each row keeps its characters' counts in a (B, V) table.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from charlm.noise import noise_key
from charlm.sampling_params import SamplingParams, resolve_seed

# The per-row scalars, in the order `set_row` writes them.
SCALARS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition", "frequency", "presence",
           "relative_frequency", "key", "drawn")


@dataclasses.dataclass(frozen=True)
class SamplingRows:
    """drawn counts the characters each row has drawn (the counter of its noise); the seeds stay on
    the host, the device needs only their keys. `seen` counts each character in the prompt and the
    output, `produced` in the output alone (for the penalties)."""

    temperature: Tensor  # (B,) float32
    top_k: Tensor  # (B,) int64
    top_p: Tensor  # (B,) float32
    min_p: Tensor  # (B,) float32
    typical_p: Tensor  # (B,) float32
    repetition: Tensor  # (B,) float32
    frequency: Tensor  # (B,) float32
    presence: Tensor  # (B,) float32
    relative_frequency: Tensor  # (B,) float32
    key: Tensor  # (B,) int64
    drawn: Tensor  # (B,) int64
    bias: Tensor  # (B, V) float32, logit_bias
    seen: Tensor  # (B, V) float32
    produced: Tensor  # (B, V) float32
    grammar_state: Tensor  # (B,) int64, each row's state in its decoder's `GrammarTable` (0: no grammar)

    @classmethod
    def zeros(cls, rows: int, vocab_size: int, device: torch.device | str) -> SamplingRows:
        """Rows that leave the distribution as it is (temperature 0: greedy)."""
        scalars = {name: torch.zeros(rows, device=device) for name in SCALARS}
        for name in ("top_k", "key", "drawn"):
            scalars[name] = scalars[name].long()
        for name in ("top_p", "typical_p", "repetition"):
            scalars[name].fill_(1.0)
        tables = {name: torch.zeros(rows, vocab_size, device=device) for name in ("bias", "seen", "produced")}
        return cls(**scalars, **tables, grammar_state=torch.zeros(rows, dtype=torch.long, device=device))

    @classmethod
    def of(cls, params: list[SamplingParams], vocab_size: int, device: torch.device | str,
           seeds: list[int] | None = None, prompts: list[list[int]] | None = None) -> SamplingRows:
        """Rows for `params`, drawing with `seeds` (default: each one's own seed, else a random one)."""
        rows = cls.zeros(len(params), vocab_size, device)
        for row, p in enumerate(params):
            seed = resolve_seed(p.seed) if seeds is None else seeds[row]
            rows.set_row(row, p, seed, prompts[row] if prompts is not None else [])
        return rows

    def _tensors(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def narrow(self, rows: int) -> SamplingRows:
        """Views of the first `rows` rows."""
        return SamplingRows(*(t[:rows] for t in self._tensors()))

    def set_row(self, row: int, params: SamplingParams, seed: int, prompt: list[int], grammar_state: int = 0) -> None:
        """A new sequence in `row`: its parameters, its seed, nothing drawn yet, the counts of its
        prompt's characters where a penalty looks at them, and its grammar's initial state (0: none)."""
        values = (params.temperature, params.top_k, params.top_p, params.min_p, params.typical_p,
                  params.repetition_penalty, params.frequency_penalty, params.presence_penalty,
                  params.relative_frequency_penalty, noise_key(seed), 0)
        for name, value in zip(SCALARS, values, strict=True):
            getattr(self, name)[row] = value
        self.grammar_state[row] = grammar_state
        vocab_size = self.bias.size(1)
        self.bias[row].zero_()
        for char_id, value in params.logit_bias:
            if char_id >= vocab_size:
                raise ValueError(f"logit_bias names character {char_id}; the vocabulary has {vocab_size}")
            self.bias[row, char_id] = value
        self.produced[row].zero_()
        if params.counts_prompt and prompt:
            counts = torch.bincount(torch.tensor(prompt), minlength=vocab_size).float()  # (V,)
            self.seen[row].copy_(counts)
        else:
            self.seen[row].zero_()

    def copy_row(self, source: int, target: int) -> None:
        for tensor in self._tensors():
            tensor[target] = tensor[source]

    def count(self, ids: Tensor, counts: Tensor | None) -> None:
        """Add the drawn characters ids (B,) to the tables (for the rows where `counts` is true)."""
        weight = torch.ones_like(ids, dtype=torch.float32) if counts is None else counts.float()  # (B,)
        self.seen.scatter_add_(1, ids[:, None], weight[:, None])
        self.produced.scatter_add_(1, ids[:, None], weight[:, None])
