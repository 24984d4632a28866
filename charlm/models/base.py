"""What every architecture shares: the model contract, decode state and config parsing."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

S = TypeVar("S", bound="DecodeState")


@dataclasses.dataclass
class DecodeState:
    """Per-sequence decoding state, held as rows of tensors.

    Every field is a tensor with one row per sequence along `batch_dims[field]`,
    so an engine can drop finished sequences (`select`) and admit new ones
    (`concat`) between steps without knowing which architecture it drives.
    """

    batch_dims: ClassVar[dict[str, int]] = {}

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def batch_size(self) -> int:
        name, dim = next(iter(self.batch_dims.items()))
        return int(getattr(self, name).size(dim))

    def select(self: S, rows: Tensor) -> S:
        """A state holding only `rows` (int64 indices), in that order."""
        return type(self)(**{
            name: t.index_select(self.batch_dims[name], rows) for name, t in self._tensors().items()
        })

    @classmethod
    def concat(cls: type[S], states: list[S]) -> S:
        """One state holding the rows of all `states`, in order."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{
            name: torch.cat([getattr(s, name) for s in states], dim=cls.batch_dims[name])
            for name in names
        })

    def detach(self: S) -> S:
        """The same values cut from the autograd graph (truncated backpropagation)."""
        return type(self)(**{name: t.detach() for name, t in self._tensors().items()})

    def to(self: S, device: torch.device | str) -> S:
        return type(self)(**{name: t.to(device) for name, t in self._tensors().items()})


class CharModel(nn.Module):
    """The contract of the three architectures.

    `forward(idx, targets)` scores whole sequences for training and evaluation;
    `step(tokens, state)` decodes incrementally: it consumes `tokens` (B, T) —
    a whole prompt (prefill) or one new character per row — and returns the
    logits for the character that follows each row, with the updated state.
    """

    architecture: ClassVar[str]
    config_class: ClassVar[type]
    # Recurrent models can carry state from one training chunk to the next
    # (truncated backpropagation through time) through `forward_carry`.
    carries_state: ClassVar[bool] = False

    config: Any

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def step(self, tokens: Tensor, state: DecodeState | None = None) -> tuple[Tensor, DecodeState]:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str) -> DecodeState:
        raise NotImplementedError

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
