"""minGRU ("Were RNNs All We Needed?", Feng et al., 2024): a GRU whose gates read only the input.

Each layer keeps h_t = a_t * h_{t-1} + b_t, with a_t = 1 - z_t, b_t = z_t * g(u_t), z_t = sigmoid(k_t)
and k_t, u_t linear in the layer's input x_t alone (g > 0, below). With no h_{t-1} inside a_t or b_t,
`forward` computes every h_t of a sequence at once with a parallel scan (`LinearScan`), and `step`
is the plain recurrence. Blocks are pre-LayerNorm: x + minGRU(norm(x)), then x + MLP(norm(x)).
A row's decode state is h of every layer, in float32: its size never depends on the context.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.models.base import (
    DecodeState,
    RecurrentCharModel,
    init_normal,
    require,
    scaled_init_std,
    sequence_loss,
)

# At initialisation each channel forgets with its own time constant, spread evenly in log scale
# between 2 and this many characters, so that some of the state remembers far from the start.
MAX_TIMESCALE = 256.0


@dataclasses.dataclass(frozen=True)
class MinGRUConfig:
    vocab_size: int
    n_embd: int = 128
    n_layer: int = 4
    hidden_size: int = 192  # channels of each layer's recurrent state
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_embd", "n_layer", "hidden_size"):
            require(getattr(self, name) >= 1, f"{name} must be at least 1")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")


@dataclasses.dataclass
class MinGRUState(DecodeState):
    """h: (n_layer, B, hidden_size), float32 whatever the weights' dtype."""

    h: Tensor

    batch_dims: ClassVar[dict[str, int]] = {"h": 1}


def candidate(u: Tensor) -> Tensor:
    """g(u): u + 1/2 for u >= 0, sigmoid(u) below; positive, continuous, and linear for large u."""
    return torch.where(u >= 0, u + 0.5, torch.sigmoid(u))


def doubling_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """Every h_t = a_t * h_{t-1} + b_t from h0 (B, H), for a and b (B, T, H), in log2(T) rounds.

    Round r turns each (a_t, b_t) into the composition of the 2^r steps ending at t (Hillis and
    Steele): b_t += a_t * b_{t-s}, a_t *= a_{t-s}. With 0 < a < 1 it only multiplies factors below
    one and adds non-negative terms, so nothing overflows in float32: no log space is needed,
    unlike a cumulative product divided out again (Heinsen's scan), which also measured slower.
    """
    b = b.clone()  # (B, T, H)
    b[:, 0] += a[:, 0] * h0
    a = a.clone()
    shift = 1
    while shift < b.size(1):
        carried = a[:, shift:] * b[:, :-shift]  # read before b changes: rounds are double-buffered
        b[:, shift:] += carried
        if 2 * shift < b.size(1):
            a[:, shift:] = a[:, shift:] * a[:, :-shift]
        shift *= 2
    return b


class LinearScan(torch.autograd.Function):
    """`doubling_scan` with its gradient written out: g_t = dL/dh_t + a_{t+1} * g_{t+1}, the same
    recurrence backwards in time, gives dL/db_t = g_t, dL/da_t = g_t * h_{t-1}, dL/dh0 = a_1 * g_1.
    Autograd through the rounds would store and zero-fill every slice of them."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = doubling_scan(a, b, h0)  # (B, T, H)
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, h0, h = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)  # (B, T, H), a_{t+1}
        g = doubling_scan(a_next.flip(1), grad_h.flip(1), torch.zeros_like(h0)).flip(1)  # (B, T, H)
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)  # (B, T, H)
        return g * h_prev, g, a[:, 0] * g[:, 0]


class MinGRULayer(nn.Module):
    """One minGRU layer: the gate and candidate projections, and the projection back to n_embd."""

    def __init__(self, config: MinGRUConfig):
        super().__init__()
        self.gates = nn.Linear(config.n_embd, 2 * config.hidden_size)
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd)

    def init_timescales(self) -> None:
        """Gate biases for forgetting times from 2 to MAX_TIMESCALE characters (z = 1 / time)."""
        hidden = self.c_proj.in_features
        times = torch.logspace(math.log10(2.0), math.log10(MAX_TIMESCALE), hidden)  # (H,)
        with torch.no_grad():
            self.gates.bias[:hidden].copy_(-torch.log(times - 1))  # sigmoid(-log(t - 1)) = 1 / t

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gates = self.gates(x).float()  # (..., 2H), float32 from here on
        hidden = self.c_proj.in_features
        return gates[..., :hidden], gates[..., hidden:]  # 2 x (..., H); slices cost less than `chunk` on a CPU

    def forward(self, x: Tensor, h0: Tensor) -> Tensor:
        """States h (B, T, H), float32, for inputs x (B, T, C) from h0 (B, H)."""
        k, u = self._gates(x)
        z = torch.sigmoid(k)
        return cast(Tensor, LinearScan.apply(1 - z, z * candidate(u), h0))

    def step(self, x: Tensor, h: Tensor) -> None:
        """Advance h (B, H), float32, in place by one input x (B, C)."""
        k, u = self._gates(x)
        h.lerp_(candidate(u), torch.sigmoid(k))  # h + z * (g(u) - h)


class MLP(nn.Module):
    def __init__(self, config: MinGRUConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: MinGRUConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.rnn = MinGRULayer(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, C) from state h0 (B, H); returns the new x and each position's state (B, T, H)."""
        h = self.rnn(self.ln_1(x), h0)  # (B, T, H)
        x = x + self.drop(self.rnn.c_proj(h.to(x.dtype)))
        return x + self.drop(self.mlp(self.ln_2(x))), h

    def step(self, x: Tensor, h: Tensor) -> Tensor:
        """One input x (B, C); updates h (B, H) in place."""
        self.rnn.step(self.ln_1(x), h)
        x = x + self.rnn.c_proj(h.to(x.dtype))
        return x + self.mlp(self.ln_2(x))


class MinGRU(RecurrentCharModel):
    architecture = "mingru"
    config_class = MinGRUConfig

    def __init__(self, config: MinGRUConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        self.apply(init_normal)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=scaled_init_std(config.n_layer))
        for block in self._blocks:
            block.rnn.init_timescales()

    @property
    def _blocks(self) -> list[Block]:
        return cast(list[Block], self.blocks)

    def _run(self, idx: Tensor, state: MinGRUState | None) -> tuple[Tensor, MinGRUState]:
        """The final hidden states x (B, T, C) for idx (B, T) from `state`, and the state after."""
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        x = self.drop(self.wte(idx))  # (B, T, C)
        last = []
        for layer, block in enumerate(self._blocks):
            x, h = block(x, state.h[layer])
            last.append(h[:, -1])  # (B, H)
        return self.ln_f(x), MinGRUState(torch.stack(last))

    def forward_carry(
        self, idx: Tensor, targets: Tensor | None, state: DecodeState | None
    ) -> tuple[Tensor, Tensor | None, MinGRUState]:
        assert state is None or isinstance(state, MinGRUState)
        x, state = self._run(idx, state)
        logits = self.lm_head(x)  # (B, T, V)
        return logits, sequence_loss(logits, targets), state

    def init_state(self, batch_size: int, device: torch.device | str) -> MinGRUState:
        shape = (self.config.n_layer, batch_size, self.config.hidden_size)
        return MinGRUState(torch.zeros(shape, dtype=torch.float32, device=device))

    def prefill(self, tokens: Tensor, state: DecodeState) -> Tensor:
        assert isinstance(state, MinGRUState)
        x, new = self._run(tokens, state)
        state.copy_(new)
        return self.lm_head(x[:, -1])  # (B, V)

    def step(self, tokens: Tensor, state: DecodeState, filled: int | None = None) -> Tensor:
        assert isinstance(state, MinGRUState)
        x = self.wte(tokens)  # (B, C)
        for layer, block in enumerate(self._blocks):
            x = block.step(x, state.h[layer])
        return self.lm_head(self.ln_f(x))  # (B, V)
