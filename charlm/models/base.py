"""What every architecture shares: the model contract, decode state and config parsing."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

S = TypeVar("S", bound="DecodeState")


# Decoding attention never goes through cuDNN's: it plans anew for every key length, and its
# host time per call (about 10 ms measured on an H200) exceeded a whole decode step tenfold.
DECODE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# How decoding attends over a cache: "auto", the Triton kernel (`charlm.decode_kernel`) for one-query
# steps of a model whose `prepare_decoding` found it working (CUDA only), scaled dot-product
# attention otherwise; or one way for every step: "sdpa", torch's scaled dot-product attention (its
# backends as above), "bmm", two batched matrix products in the cache's dtype with the softmax in
# float32, "triton", the kernel (interpreted on a CPU: tests). SDPA's fused kernels are built for
# many queries; with one query per row, the profile on an H200 found its memory-efficient kernel at
# half the time of a 10.7M-parameter step (bench/gpu_profile.py measures each way).
DECODE_ATTENTION = "auto"


def cached_attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Attention of q (B, H, T, hd) over keys and values (B, H, S, hd) where mask (B, 1, T, S) allows.

    `lengths` (B,), the keys each row holds, is given for a one-query step (T = 1) that the Triton
    kernel serves; the mask then says the same and goes unused.
    """
    if lengths is not None:  # the operator charlm.decode_kernel registers (imported by prepare_decoding)
        return torch.ops.charlm.decode_attention(q, keys, values, lengths, 0)  # (B, H, 1, hd)
    if DECODE_ATTENTION == "bmm":
        scores = torch.matmul(q * q.size(-1) ** -0.5, keys.transpose(-1, -2))  # (B, H, T, S)
        weights = scores.float().masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return torch.matmul(weights.to(values.dtype), values)  # (B, H, T, hd)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def decode_attention(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The scaled dot-product attention backends allowed while decoding on `device`
    (`DECODE_SDPA_BACKENDS` on CUDA; a CPU has no cuDNN, and entering the context costs time)."""
    return sdpa_kernel(DECODE_SDPA_BACKENDS) if device.type == "cuda" else contextlib.nullcontext()


@dataclasses.dataclass
class DecodeState:
    """Decoding state of a fixed number of rows (slots), held as rows of tensors.

    Every field is a tensor with one row per sequence along `batch_dims[field]`.
    An engine allocates it once and reuses the rows: views of a range of rows
    (`narrow`) are decoded in place, a row is cleared for a new sequence
    (`zero_`) or copied over another (`copy_row`), without knowing which
    architecture it drives.
    """

    batch_dims: ClassVar[dict[str, int]] = {}

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def batch_size(self) -> int:
        name, dim = next(iter(self.batch_dims.items()))
        return int(getattr(self, name).size(dim))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def narrow(self: S, start: int, length: int) -> S:
        """Views of rows [start, start + length): writes to them land in this state."""
        return type(self)(**{
            name: t.narrow(self.batch_dims[name], start, length) for name, t in self._tensors().items()
        })

    def zero_(self) -> None:
        """Every row back to the state of a sequence that has seen nothing."""
        for t in self._tensors().values():
            t.zero_()

    def copy_(self, other: DecodeState) -> None:
        """Take the values of `other`, a state of the same shape (for example a fresh result)."""
        for name, t in self._tensors().items():
            t.copy_(getattr(other, name))

    def copy_row(self, source: int, target: int) -> None:
        """Row `target` becomes a copy of row `source`."""
        for name, t in self._tensors().items():
            dim = self.batch_dims[name]
            t.select(dim, target).copy_(t.select(dim, source))

    def detach(self: S) -> S:
        """The same values cut from the autograd graph (truncated backpropagation)."""
        return type(self)(**{name: t.detach() for name, t in self._tensors().items()})

    def to(self: S, device: torch.device | str) -> S:
        return type(self)(**{name: t.to(device) for name, t in self._tensors().items()})


class CharModel(nn.Module):
    """The contract of the three architectures.

    `forward(idx, targets)` scores whole sequences for training and evaluation.
    Decoding works on a state of fixed rows (`init_state`): `prefill(tokens, state)`
    feeds each row a chunk of characters (a prompt; eager, any length) and
    `step(tokens, state)` one character per row with shapes that never change
    and no host synchronisation, so that it can be captured as a CUDA graph.
    Both return the logits of the character that follows each row.
    """

    architecture: ClassVar[str]
    config_class: ClassVar[type]
    # Recurrent models can carry state from one training chunk to the next
    # (truncated backpropagation through time) through `forward_carry`.
    carries_state: ClassVar[bool] = False

    config: Any

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str) -> DecodeState:
        """A state of `batch_size` empty rows."""
        raise NotImplementedError

    def prefill(self, tokens: Tensor, state: DecodeState) -> Tensor:
        """Feed tokens (B, T) to the rows of `state`, in place; logits (B, V) for what follows."""
        raise NotImplementedError

    def prepare_decoding(self) -> dict[str, str]:
        """Choose how this model decodes on its device, once, before any step is captured as a
        graph (it may run and synchronise); returns what was chosen and why, for /info."""
        return {}

    def step(self, tokens: Tensor, state: DecodeState, filled: int | None = None) -> Tensor:
        """Feed one character per row, tokens (B,), in place; logits (B, V) for what follows.

        `filled`, when given, bounds the characters any row holds after this step (the
        caller tracks it), so a model may skip work beyond it; None means the whole window.
        A model with a `decode_window` requires that no row is full (`reencode` first).
        """
        raise NotImplementedError

    @property
    def decode_window(self) -> int | None:
        """How many characters a row can hold before `reencode` must make room (None: no limit)."""
        return None

    @property
    def reencoded_length(self) -> int:
        """How many characters a row holds after `reencode`."""
        raise NotImplementedError(f"{self.architecture} never re-encodes")

    def reencode(self, state: DecodeState, rows: Tensor) -> None:
        """Make room in the full rows `rows` (R,) int64, in place."""
        raise NotImplementedError(f"{self.architecture} never re-encodes")

    def forward_carry(
        self, idx: Tensor, targets: Tensor | None, state: DecodeState | None
    ) -> tuple[Tensor, Tensor | None, DecodeState]:
        raise NotImplementedError(f"{self.architecture} does not carry state between chunks")

    @property
    def context_size(self) -> int | None:
        """How many past characters can influence the next one (None: unbounded)."""
        return None

    def num_parameters(self) -> int:
        """Distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())


class RecurrentCharModel(CharModel):
    """A model whose state reaches back indefinitely: `forward` is `forward_carry` from a fresh state."""

    carries_state = True

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        logits, loss, _ = self.forward_carry(idx, targets, None)
        return logits, loss


def sequence_loss(logits: Tensor, targets: Tensor | None) -> Tensor | None:
    """Mean cross-entropy of (B, T, V) logits against (B, T) targets, in float32."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style initialisation, applied with `model.apply`."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


def scaled_init_std(n_layer: int) -> float:
    """Residual projections shrink with depth so the residual stream keeps its scale."""
    return 0.02 / math.sqrt(2 * n_layer)


def config_from_dict(config_class: type, data: dict[str, Any]) -> Any:
    """Build a frozen config dataclass from plain JSON values, naming every problem."""
    if not isinstance(data, dict):
        raise ValueError(f"a model config must be a JSON object, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(config_class)
    values = {name: coerce_value(name, value, hints[name]) for name, value in data.items()}
    return config_class(**values)


def coerce_value(name: str, value: Any, annotation: Any) -> Any:
    """Check one JSON or command-line value against its annotation (int, float, bool, str)."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ValueError(f"{name} must be {names}, got {value!r}")


def require(condition: bool, message: str) -> None:
    """Config validation: raise ValueError with `message` unless `condition`."""
    if not condition:
        raise ValueError(message)
