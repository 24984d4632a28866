"""Multi-layer LSTM in the char-rnn lineage."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.models.base import DecodeState, RecurrentCharModel, require, sequence_loss


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int
    n_embd: int = 0  # 0: one-hot input, as char-rnn does
    hidden_size: int = 256
    n_layer: int = 2
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layer"):
            require(getattr(self, name) >= 1, f"{name} must be at least 1")
        require(self.n_embd >= 0, "n_embd must be 0 (one-hot) or positive")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")


@dataclasses.dataclass
class LSTMState(DecodeState):
    """h, c: (n_layer, B, hidden_size)."""

    h: Tensor
    c: Tensor

    batch_dims: ClassVar[dict[str, int]] = {"h": 1, "c": 1}


class CharInput(nn.Module):
    """Embedding, or the one-hot encoding of char-rnn when `n_embd` is 0."""

    def __init__(self, vocab_size: int, n_embd: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, n_embd) if n_embd else None
        self.size = n_embd or vocab_size
        # One-hot rows looked up in an identity matrix: `F.one_hot` checks the ids' range on the
        # host, the costliest operator of a CPU step after the LSTM cells. Not saved (persistent=False).
        self.one_hot: Tensor | None
        self.register_buffer("one_hot", None if n_embd else torch.eye(vocab_size), persistent=False)

    def forward(self, idx: Tensor, dtype: torch.dtype) -> Tensor:
        if self.embedding is not None:
            return self.embedding(idx)  # (B, T, n_embd)
        assert self.one_hot is not None
        return F.embedding(idx, self.one_hot).to(dtype)  # (B, T, V)


def stacked_lstm(input_size: int, hidden_size: int, n_layer: int, dropout: float) -> nn.LSTM:
    """`n_layer` LSTM layers, batch first, with dropout between layers (none after the last)."""
    return nn.LSTM(input_size, hidden_size, num_layers=n_layer, dropout=dropout if n_layer > 1 else 0.0,
                   batch_first=True)


def move_compacted(module: nn.Module, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> None:
    """`module.to(device, dtype)`, its recurrent layers' weights then put back in one cuDNN buffer each."""
    module.to(device=device, dtype=dtype)
    for layer in module.modules():
        if isinstance(layer, nn.RNNBase):
            compact_weights(layer)


def compact_weights(rnn: nn.RNNBase) -> None:
    """Put the weights of `rnn` back into one contiguous cuDNN buffer after a move.

    torch's own `flatten_parameters` skips bfloat16, which cuDNN then runs anyway,
    compacting a fresh copy of the weights at every call (and warning each time):
    this flattens them for bfloat16 too.
    """
    rnn.flatten_parameters()
    weights = [w for w in rnn._flat_weights if isinstance(w, Tensor)]
    if len(weights) != len(rnn._flat_weights) or not all(w.is_cuda for w in weights):
        return
    if len({w.untyped_storage().data_ptr() for w in weights}) == 1:
        return
    from torch.backends.cudnn import rnn as cudnn_rnn

    with torch.no_grad():
        torch._cudnn_rnn_flatten_weight(
            weights, 4 if rnn.bias else 2, rnn.input_size, cudnn_rnn.get_cudnn_mode(rnn.mode), rnn.hidden_size,
            rnn.proj_size, rnn.num_layers, rnn.batch_first, bool(rnn.bidirectional),
        )


def lstm_step(lstm: nn.LSTM, x: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """One time step of `lstm` (in eval mode) for inputs x (B, I); updates h, c (L, B, H) in place
    and returns the last layer's output (B, H).

    Layer by layer with the fused LSTM cell: a few kernels with fixed shapes, where cuDNN's
    sequence kernel would plan each call.
    """
    for layer, (h_layer, c_layer) in enumerate(zip(h.unbind(0), c.unbind(0), strict=True)):
        weights = [getattr(lstm, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h_new, c_new = torch.lstm_cell(x, (h_layer, c_layer), *weights)  # 2 x (B, H)
        h_layer.copy_(h_new)
        c_layer.copy_(c_new)
        x = h_new
    return x


class LSTM(RecurrentCharModel):
    architecture = "lstm"
    config_class = LSTMConfig

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.input = CharInput(config.vocab_size, config.n_embd)
        self.lstm = stacked_lstm(self.input.size, config.hidden_size, config.n_layer, config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def _run(self, idx: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        x = self.input(idx, self.head.weight.dtype)  # (B, T, I)
        hc = None if state is None else (state.h, state.c)
        out, (h, c) = self.lstm(x, hc)  # out: (B, T, H)
        return self.drop(out), LSTMState(h, c)

    def forward_carry(
        self, idx: Tensor, targets: Tensor | None, state: DecodeState | None
    ) -> tuple[Tensor, Tensor | None, LSTMState]:
        assert state is None or isinstance(state, LSTMState)
        out, state = self._run(idx, state)
        logits = self.head(out)  # (B, T, V)
        return logits, sequence_loss(logits, targets), state

    def init_state(self, batch_size: int, device: torch.device | str) -> LSTMState:
        shape = (self.config.n_layer, batch_size, self.config.hidden_size)
        dtype = self.head.weight.dtype
        return LSTMState(
            torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        )

    def prefill(self, tokens: Tensor, state: DecodeState) -> Tensor:
        assert isinstance(state, LSTMState)
        # cuDNN wants whole tensors; the state may be a view of some rows of a larger one.
        out, new = self._run(tokens, LSTMState(state.h.contiguous(), state.c.contiguous()))
        state.copy_(new)
        return self.head(out[:, -1])  # (B, V)

    def step(self, tokens: Tensor, state: DecodeState, filled: int | None = None) -> Tensor:
        assert isinstance(state, LSTMState)
        out = lstm_step(self.lstm, self.input(tokens, self.head.weight.dtype), state.h, state.c)  # (B, H)
        return self.head(out)  # (B, V)
