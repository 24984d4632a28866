"""Training configuration, presets and `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from charlm.models import model_class
from charlm.models.base import config_from_dict, require

BATCHING_MODES = ("windows", "streams")


class ConfigError(ValueError):
    """An invalid preset, architecture or setting; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 12
    seq_len: int = 0  # characters per training sequence; 0: the model's block_size
    # windows: random windows (nanoGPT); streams: contiguous chunks whose recurrent
    # state carries over, detached, from one batch to the next (char-rnn).
    batching: str = "windows"
    max_iters: int = 2000
    max_minutes: float = 0.0  # a time budget: evaluate and stop once this much training time has passed; 0: none
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: off
    eval_interval: int = 250
    eval_iters: int = 20
    patience: int = 0  # evaluations without a better val loss before stopping; 0: never
    val_fraction: float = 0.1
    seed: int = 1337
    compile: bool = False
    sample_chars: int = 200

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_iters", "eval_interval", "eval_iters"):
            require(getattr(self, name) >= 1, f"{name} must be at least 1")
        for name in ("seq_len", "warmup_iters", "lr_decay_iters", "patience", "sample_chars"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0")
        require(0 <= self.max_minutes < 10**7, "max_minutes must be >= 0 (0: no time limit)")
        require(self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr")
        require(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay and grad_clip must be >= 0")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
        require(0 < self.val_fraction < 1, "val_fraction must be in (0, 1)")
        require(0 <= self.seed < 2**63, "seed must be in [0, 2**63)")
        require(self.batching in BATCHING_MODES, f"batching must be one of {BATCHING_MODES}")

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters


@dataclasses.dataclass(frozen=True)
class Preset:
    architecture: str
    model: dict[str, Any]
    train: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "gpt-tiny": Preset(
        "gpt",
        dict(n_layer=4, n_head=4, n_embd=64, block_size=32, dropout=0.0),
        dict(batch_size=16, lr=1e-3, max_iters=2000, eval_interval=250),
    ),
    # nanoGPT's Shakespeare recipe for a CPU.
    "gpt-small": Preset(
        "gpt",
        dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        dict(batch_size=12, lr=1e-3, max_iters=2000, lr_decay_iters=2000, eval_iters=20),
    ),
    # nanoGPT's Shakespeare recipe for a GPU (10.7M parameters).
    "gpt-baby": Preset(
        "gpt",
        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        dict(batch_size=64, lr=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=5000,
             lr_decay_iters=5000, eval_iters=200),
    ),
    # char-rnn's default: 2 x 256 LSTM over one-hot input, 100-character chunks.
    "lstm": Preset(
        "lstm",
        dict(n_embd=0, hidden_size=256, n_layer=2, dropout=0.5),
        dict(batch_size=50, seq_len=100, batching="streams", lr=2e-3, min_lr=2e-4,
             max_iters=5000, weight_decay=0.0, eval_iters=40),
    ),
    "lstm-attention": Preset(
        "lstm_attention",
        dict(n_embd=128, hidden_size=256, n_layer=2, n_head=4, block_size=64, dropout=0.2),
        dict(batch_size=32, seq_len=128, batching="streams", lr=2e-3, min_lr=2e-4,
             max_iters=5000, weight_decay=0.0, eval_iters=40),
    ),
    # minGRU at shakespeare-gpt's size (about 0.8M parameters) and batch shape.
    "mingru": Preset(
        "mingru",
        dict(n_embd=128, n_layer=4, hidden_size=192, dropout=0.0),
        dict(batch_size=32, seq_len=128, lr=2e-3, min_lr=2e-4, warmup_iters=200, max_iters=5000,
             eval_iters=50),
    ),
}
DEFAULT_PRESET = {"gpt": "gpt-small", "lstm": "lstm", "lstm_attention": "lstm-attention", "mingru": "mingru"}


def parse_assignment(text: str) -> tuple[str, Any]:
    """'key=value' with value read as JSON when it parses (numbers, booleans), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def resolve(
    architecture: str | None, preset: str | None, overrides: dict[str, Any], vocab_size: int
) -> tuple[str, Any, TrainConfig]:
    """(architecture, model config, TrainConfig) from a preset and `--set` overrides."""
    if preset is None:
        if architecture is None:
            raise ConfigError("give --arch or --preset")
        preset = DEFAULT_PRESET.get(architecture)
        if preset is None:
            raise ConfigError(
                f"unknown architecture {architecture!r}; choose one of {sorted(DEFAULT_PRESET)}"
            )
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    chosen = PRESETS[preset]
    if architecture is not None and architecture != chosen.architecture:
        raise ConfigError(
            f"preset {preset!r} is for architecture {chosen.architecture!r}, not {architecture!r}"
        )
    return (chosen.architecture, *apply_overrides(chosen, overrides, vocab_size))


def apply_overrides(preset: Preset, overrides: dict[str, Any], vocab_size: int) -> tuple[Any, TrainConfig]:
    config_class = model_class(preset.architecture).config_class
    model_fields = {f.name for f in dataclasses.fields(config_class)} - {"vocab_size"}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - model_fields - set(train_fields))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {unknown}; model settings: {sorted(model_fields)}; "
            f"training settings: {sorted(train_fields)}"
        )
    model = {**preset.model, **{k: v for k, v in overrides.items() if k in model_fields}}
    train = {**preset.train, **{k: v for k, v in overrides.items() if k in train_fields}}
    try:
        model_config = config_from_dict(config_class, {**model, "vocab_size": vocab_size})
        train_config = config_from_dict(TrainConfig, train)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return model_config, train_config

