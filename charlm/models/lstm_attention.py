"""An LSTM whose outputs attend over its own recent past outputs.

At each position t the LSTM output o_t is the query of a causal multi-head
scaled dot-product attention, softmax(QK^T / sqrt(d_k)) V, over the outputs
o_{t-block_size+1} .. o_t; the result is added back to o_t (residual),
normalised (LayerNorm) and projected to the vocabulary. Decoding keeps (h, c)
and the last `block_size - 1` outputs, so each step costs the same.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.models.base import DecodeState, RecurrentCharModel, decode_attention, require, sequence_loss
from charlm.models.lstm import CharInput, lstm_step, stacked_lstm


@dataclasses.dataclass(frozen=True)
class LSTMAttentionConfig:
    vocab_size: int
    n_embd: int = 128  # 0: one-hot input
    hidden_size: int = 256
    n_layer: int = 2
    n_head: int = 4
    block_size: int = 64  # attention window, the current position included
    dropout: float = 0.2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layer", "n_head", "block_size"):
            require(getattr(self, name) >= 1, f"{name} must be at least 1")
        require(self.n_embd >= 0, "n_embd must be 0 (one-hot) or positive")
        require(self.hidden_size % self.n_head == 0, "hidden_size must be a multiple of n_head")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")


@dataclasses.dataclass
class LSTMAttentionState(DecodeState):
    """h, c: (n_layer, B, H); past: (B, block_size - 1, H) the latest outputs,
    oldest first; n_past: (B,) how many of them are real (the rest is padding)."""

    h: Tensor
    c: Tensor
    past: Tensor
    n_past: Tensor

    batch_dims: ClassVar[dict[str, int]] = {"h": 1, "c": 1, "past": 0, "n_past": 0}


class LSTMAttention(RecurrentCharModel):
    architecture = "lstm_attention"
    config_class = LSTMAttentionConfig

    def __init__(self, config: LSTMAttentionConfig):
        super().__init__()
        self.config = config
        self.input = CharInput(config.vocab_size, config.n_embd)
        self.lstm = stacked_lstm(self.input.size, config.hidden_size, config.n_layer, config.dropout)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    @property
    def context_size(self) -> None:
        return None  # the LSTM state reaches back indefinitely; attention sees block_size

    def _attend(self, out: Tensor, past: Tensor, n_past: Tensor) -> Tensor:
        """Outputs out (B, T, H) attend over [past, out] (B, P + T, H) within the window."""
        B, T, H = out.shape
        P = past.size(1)
        keys = torch.cat([past.to(out.dtype), out], dim=1)  # (B, P + T, H)
        q = self.qkv(out)[..., :H]  # (B, T, H)
        k, v = self.qkv(keys)[..., H:].split(H, dim=2)  # 2 x (B, P + T, H)
        heads = self.config.n_head
        q, k, v = (t.view(B, t.size(1), heads, H // heads).transpose(1, 2) for t in (q, k, v))
        query_pos = P + torch.arange(T, device=out.device)[:, None]  # (T, 1)
        key_pos = torch.arange(P + T, device=out.device)[None, :]  # (1, P + T)
        in_window = (key_pos <= query_pos) & (query_pos - key_pos < self.config.block_size)
        real = key_pos >= (P - n_past)[:, None, None]  # (B, 1, P + T): padding never attended
        mask = (in_window[None] & real).unsqueeze(1)  # (B, 1, T, P + T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, hd)
        y = y.transpose(1, 2).reshape(B, T, H)
        return self.drop(self.norm(out + self.proj(y)))

    def forward_carry(
        self, idx: Tensor, targets: Tensor | None, state: DecodeState | None
    ) -> tuple[Tensor, Tensor | None, LSTMAttentionState]:
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        assert isinstance(state, LSTMAttentionState)
        x = self.input(idx, self.head.weight.dtype)  # (B, T, I)
        out, (h, c) = self.lstm(x, (state.h, state.c))  # out: (B, T, H)
        logits = self.head(self._attend(out, state.past, state.n_past))  # (B, T, V)
        T = idx.size(1)
        past = torch.cat([state.past.to(out.dtype), out], dim=1)[:, T:]  # the latest block_size - 1
        n_past = (state.n_past + T).clamp(max=past.size(1))
        return logits, sequence_loss(logits, targets), LSTMAttentionState(h, c, past, n_past)

    def init_state(self, batch_size: int, device: torch.device | str) -> LSTMAttentionState:
        c = self.config
        dtype = self.head.weight.dtype
        hc_shape = (c.n_layer, batch_size, c.hidden_size)
        return LSTMAttentionState(
            h=torch.zeros(hc_shape, dtype=dtype, device=device),
            c=torch.zeros(hc_shape, dtype=dtype, device=device),
            past=torch.zeros(batch_size, c.block_size - 1, c.hidden_size, dtype=dtype, device=device),
            n_past=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def prefill(self, tokens: Tensor, state: DecodeState) -> Tensor:
        assert isinstance(state, LSTMAttentionState)
        contiguous = LSTMAttentionState(state.h.contiguous(), state.c.contiguous(), state.past, state.n_past)
        with decode_attention(tokens.device):
            logits, _, new = self.forward_carry(tokens, None, contiguous)
        state.copy_(new)
        return logits[:, -1]  # (B, V)

    def step(self, tokens: Tensor, state: DecodeState, filled: int | None = None) -> Tensor:
        assert isinstance(state, LSTMAttentionState)
        out = lstm_step(self.lstm, self.input(tokens, self.head.weight.dtype), state.h, state.c)[:, None]  # (B, 1, H)
        with decode_attention(tokens.device):
            logits = self.head(self._attend(out, state.past, state.n_past))[:, -1]  # (B, V)
        if state.past.size(1):  # a window of 1 keeps no past
            state.past.copy_(torch.cat([state.past[:, 1:], out.to(state.past.dtype)], dim=1))  # (B, P, H)
            state.n_past.add_(1).clamp_(max=state.past.size(1))
        return logits
