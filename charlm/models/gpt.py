"""Decoder-only transformer in the nanoGPT lineage, with a KV cache for decoding.

Past `block_size`: learned absolute position embeddings tie every cached key to
its position, so a full cache cannot simply slide. When a row's cache is full,
its window is re-encoded from its most recent `block_size // 2` characters
(positions restart at 0) and decoding continues; the cost of re-encoding is
amortised over the next `block_size // 2` steps. Generation never stops at the
context limit, and the logits of every step equal `forward` on the window the
state holds (`GPTState.window`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import charlm.models.base as base
from charlm.models.base import (
    CharModel,
    DecodeState,
    cached_attention,
    decode_attention,
    init_normal,
    require,
    scaled_init_std,
    sequence_loss,
)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            require(getattr(self, name) >= 1, f"{name} must be at least 1")
        require(self.n_embd % self.n_head == 0, "n_embd must be a multiple of n_head")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")


@dataclasses.dataclass
class GPTState(DecodeState):
    """KV cache with one row per sequence.

    kv: (n_layer, 2, B, n_head, block_size, head_dim) keys and values by position;
    tokens: (B, block_size) the characters of each row's window;
    length: (B,) how many positions of each row are filled.
    """

    kv: Tensor
    tokens: Tensor
    length: Tensor

    batch_dims: ClassVar[dict[str, int]] = {"kv": 2, "tokens": 0, "length": 0}

    def window(self, row: int) -> Tensor:
        """The characters row `row` currently attends to."""
        return self.tokens[row, : int(self.length[row])]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _qkv(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, H, hd)

    def _heads(self, x: Tensor) -> tuple[Tensor, ...]:
        return self._qkv(x).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, hd)

    def _merge(self, y: Tensor) -> Tensor:
        B, H, T, hd = y.shape
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, H * hd))  # (B, T, C)
        return self.resid_dropout(y) if self.training else y  # decoding skips even the call

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(x)
        dropout = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True))

    def forward_cached(self, x: Tensor, kv: Tensor, rows: Tensor, positions: Tensor, mask: Tensor,
                       lengths: Tensor | None = None) -> Tensor:
        """Attend from x (B, T, C) at `positions` (B, T) of `rows` (B, 1) over the cache kv (2, B, H, S, hd).

        Writes this chunk's keys and values into the cache in place first, then attends
        over the first mask.size(-1) slots (no row holds more); `lengths` as `cached_attention`'s.
        """
        qkv = self._qkv(x)  # (B, T, 3, H, hd)
        # kv[:, rows, :, positions] is (B, T, 2, H, hd): the keys and values as the projection laid
        # them out, written with no stack or permute (a CPU step pays for every operator).
        kv[:, rows, :, positions] = qkv[:, :, 1:]
        q = qkv[:, :, 0].transpose(1, 2)  # (B, H, T, hd)
        span = mask.size(-1)
        keys, values = kv[0, :, :, :span], kv[1, :, :, :span]  # (B, H, span, hd), the model's dtype
        return self._merge(cached_attention(q, keys, values, mask, lengths))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.c_proj(F.gelu(self.c_fc(x)))
        return self.dropout(x) if self.training else x


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, kv: Tensor, rows: Tensor, positions: Tensor, mask: Tensor,
                       lengths: Tensor | None = None) -> Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), kv, rows, positions, mask, lengths)
        return x + self.mlp(self.ln_2(x))


class GPT(CharModel):
    architecture = "gpt"
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        self.attention_kernel = False  # one-query steps attend with the Triton kernel (prepare_decoding)
        self.apply(init_normal)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=scaled_init_std(config.n_layer))

    @property
    def context_size(self) -> int:
        return self.config.block_size

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        T = idx.size(1)
        if self.config.block_size < T:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        positions = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits, sequence_loss(logits, targets)

    @property
    def decode_window(self) -> int:
        return self.config.block_size

    @property
    def reencoded_length(self) -> int:
        return self.config.block_size // 2

    def prepare_decoding(self) -> dict[str, str]:
        """One-query steps attend with the Triton kernel on CUDA when it passes its self-check at
        this model's shapes (see `base.DECODE_ATTENTION`), otherwise with the other ways."""
        how, device, c = base.DECODE_ATTENTION, self.wte.weight.device, self.config
        self.attention_kernel = False
        if how == "auto" and device.type != "cuda":
            return {"decode_attention": "sdpa", "decode_attention_reason": f"on {device.type}"}
        if how != "auto":
            self.attention_kernel = how == "triton"
            if self.attention_kernel:
                from charlm import decode_kernel  # registers the kernel's operator
            return {"decode_attention": how, "decode_attention_reason": f"DECODE_ATTENTION is {how!r}"}
        from charlm import decode_kernel  # here only: Triton's import is slow, and CPU installs lack it

        problem = decode_kernel.check_logged(device, self.wte.weight.dtype, c.n_embd // c.n_head, c.block_size)
        self.attention_kernel = problem is None
        reason = problem or "the Triton kernel passed its self-check"
        return {"decode_attention": "triton" if problem is None else "sdpa", "decode_attention_reason": reason}

    def init_state(self, batch_size: int, device: torch.device | str) -> GPTState:
        c = self.config
        dtype = self.wte.weight.dtype
        head_dim = c.n_embd // c.n_head
        shape = (c.n_layer, 2, batch_size, c.n_head, c.block_size, head_dim)
        return GPTState(
            kv=torch.zeros(shape, dtype=dtype, device=device),
            tokens=torch.zeros(batch_size, c.block_size, dtype=torch.long, device=device),
            length=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def prefill(self, tokens: Tensor, state: DecodeState) -> Tensor:
        """Append tokens (B, T) to each row's window, re-encoding rows that overflow; logits (B, V).

        Eager: it reads the rows' lengths on the host.
        """
        assert isinstance(state, GPTState)
        size = self.config.block_size
        tokens = tokens[:, -size:]  # older characters would be re-encoded away anyway
        longest = int(state.length.max()) + tokens.size(1)
        if longest > size:
            overflow = (state.length + tokens.size(1) > size).nonzero().squeeze(1)
            self._reencode(state, overflow, keep=min(size // 2, size - tokens.size(1)))
            longest = int(state.length.max()) + tokens.size(1)
        positions = state.length[:, None] + torch.arange(tokens.size(1), device=tokens.device)  # (B, T)
        return self._advance(tokens, state, positions, longest)

    def step(self, tokens: Tensor, state: DecodeState, filled: int | None = None) -> Tensor:
        """One character per row at position `length`; rows are never full here (see `reencode`).

        Idle rows of a fixed-shape batch may run on past the window: their position is clamped,
        so every index stays in range whatever they hold.
        """
        assert isinstance(state, GPTState)
        size = self.config.block_size
        positions = state.length.clamp(max=size - 1)[:, None]  # (B, 1)
        return self._advance(tokens[:, None], state, positions, size if filled is None else min(filled, size))

    def _advance(self, tokens: Tensor, state: GPTState, positions: Tensor, span: int) -> Tensor:
        """Run tokens (B, T) at `positions` (B, T) on top of the cache, whose rows fill at most
        `span` slots afterwards; logits (B, V) after each row's last token."""
        slots = torch.arange(span, device=tokens.device)  # (span,)
        mask = (slots[None, None, :] <= positions[:, :, None]).unsqueeze(1)  # (B, 1, T, span)
        x = self.wte(tokens) + self.wpe(positions)  # (B, T, C)
        lengths = positions[:, 0] + 1 if self.attention_kernel and tokens.size(1) == 1 else None  # (B,)
        rows = torch.arange(tokens.size(0), device=tokens.device)[:, None]  # (B, 1)
        with decode_attention(tokens.device):
            for layer, block in enumerate(cast(list[Block], self.blocks)):
                x = block.forward_cached(x, state.kv[layer], rows, positions, mask, lengths)
        state.tokens[rows, positions] = tokens
        state.length += tokens.size(1)
        return self.lm_head(self.ln_f(x[:, -1]))  # (B, V)

    def reencode(self, state: DecodeState, rows: Tensor) -> None:
        """Restart the full windows of `rows` from their most recent half. No host synchronisation:
        a fixed number of rows can be captured as a CUDA graph."""
        assert isinstance(state, GPTState)
        self._reencode(state, rows, keep=self.reencoded_length)

    def _reencode(self, state: GPTState, rows: Tensor, keep: int) -> None:
        """Restart the windows of `rows` from their last `keep` characters."""
        if keep == 0:
            state.length[rows] = 0
            return
        lengths = state.length[rows]  # (R,)
        # Clamped: a padding row of a fixed-size batch may hold fewer than `keep` characters.
        offsets = (lengths[:, None] - keep + torch.arange(keep, device=lengths.device)).clamp(min=0)  # (R, keep)
        recent = state.tokens[rows[:, None], offsets]  # (R, keep)
        fresh = self.init_state(rows.numel(), recent.device)
        positions = torch.arange(keep, device=recent.device).expand(rows.numel(), keep)  # (R, keep)
        self._advance(recent, fresh, positions, keep)
        state.kv[:, :, rows] = fresh.kv
        state.tokens[rows] = fresh.tokens
        state.length[rows] = fresh.length
