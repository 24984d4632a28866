"""Training's public API for the training service (which otherwise only runs `charlm train`): a
run's settings worked out before it starts, by the same code as the command line (what the service
checks when a job is created, and what it needs to follow the run: its steps, the characters each
step reads, the model's size), and the names of the files a run writes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from charlm.checkpoint import ModelDirError, load_model
from charlm.models import build_model
from training.artifacts import CARD_FILE, RESUME_FILE, STATE_FILE
from training.config import PRESETS, ConfigError, resolve
from training.data import decode_corpus
from training.session import continued_config, sequence_length

__all__ = ["CARD_FILE", "PRESETS", "RESUME_FILE", "STATE_FILE", "ConfigError", "RunPlan", "decode_corpus",
           "plan_run", "steps_for_epochs"]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    architecture: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    seq_len: int
    parameters: int
    vocab: list[str] | None  # a base model's characters (the text must use only these); None for a preset

    @property
    def chars_per_step(self) -> int:
        return int(self.train_config["batch_size"]) * self.seq_len

    @property
    def total_steps(self) -> int:
        return int(self.train_config["max_iters"])


def plan_run(overrides: dict[str, Any], vocab_size: int, preset: str | None = None,
             base: Path | None = None) -> RunPlan:
    """The settings of a new run from a preset, or of one starting from the model directory `base`
    (`--init-from`); ConfigError names what is wrong."""
    if base is not None:
        try:
            loaded = load_model(base)
        except ModelDirError as exc:
            raise ConfigError(str(exc)) from None
        model, config, vocab = loaded.model, continued_config(loaded.model, loaded.info, overrides), loaded.vocab.chars
        architecture = model.architecture
    else:
        architecture, model_config, config = resolve(None, preset, overrides, vocab_size)
        try:
            with torch.device("meta"):  # counted, not allocated: a request may ask for a huge model
                model, vocab = build_model(architecture, dataclasses.asdict(model_config)), None
        except (RuntimeError, OverflowError, MemoryError) as exc:  # sizes torch cannot even describe
            raise ConfigError(f"the model cannot be built: {exc}") from None
    return RunPlan(architecture, dataclasses.asdict(model.config), dataclasses.asdict(config),
                   sequence_length(model, config), model.num_parameters(), vocab)


def steps_for_epochs(epochs: float, train_chars: int, chars_per_step: int) -> int:
    """Steps that read `epochs` times the training characters."""
    return max(1, math.ceil(epochs * train_chars / chars_per_step))

