"""The architectures, built by name through one registry."""

from __future__ import annotations

from typing import Any

from charlm.models.base import CharModel, DecodeState, config_from_dict
from charlm.models.gpt import GPT, GPTConfig
from charlm.models.lstm import LSTM, LSTMConfig
from charlm.models.lstm_attention import LSTMAttention, LSTMAttentionConfig
from charlm.models.mingru import MinGRU, MinGRUConfig

ARCHITECTURES: dict[str, type[CharModel]] = {
    "gpt": GPT,
    "lstm": LSTM,
    "lstm_attention": LSTMAttention,
    "mingru": MinGRU,
}


class UnknownArchitectureError(ValueError):
    def __init__(self, name: object):
        super().__init__(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")


def model_class(architecture: str) -> type[CharModel]:
    try:
        return ARCHITECTURES[architecture]
    except (KeyError, TypeError):
        raise UnknownArchitectureError(architecture) from None


def build_model(architecture: str, config: dict[str, Any]) -> CharModel:
    """A freshly initialised model of `architecture` from a plain config dict."""
    cls = model_class(architecture)
    return cls(config_from_dict(cls.config_class, config))


__all__ = [
    "ARCHITECTURES",
    "GPT",
    "LSTM",
    "CharModel",
    "DecodeState",
    "GPTConfig",
    "LSTMAttention",
    "LSTMAttentionConfig",
    "LSTMConfig",
    "MinGRU",
    "MinGRUConfig",
    "UnknownArchitectureError",
    "build_model",
    "model_class",
]
