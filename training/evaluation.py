"""Loss estimates during training and over whole files, as loss, perplexity and bits/char."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor
from tqdm import tqdm

from charlm.models import CharModel
from charlm.scoring import score
from training.data import WindowBatches

EVAL_SEED = 0  # every evaluation scores the same windows, so evaluations compare


def loss_metrics(loss: float) -> dict[str, float]:
    """Mean cross-entropy in nats, with the perplexity and bits per character it implies."""
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bpc": loss / math.log(2)}


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def estimate_loss(
    model: CharModel, data: Tensor, batch_size: int, seq_len: int, iters: int, device: torch.device
) -> float:
    """Mean loss over `iters` random windows of `data`, the same windows every call."""
    was_training = model.training
    model.eval()
    batches = WindowBatches(data, batch_size, seq_len, seed=EVAL_SEED)
    total = 0.0
    for _ in range(iters):
        x, y = batches.next()
        with autocast_for(device):
            _, loss = model(x.to(device), y.to(device))
        assert loss is not None
        total += loss.item()
    model.train(was_training)
    return total / iters


@torch.no_grad()
def evaluate_text(model: CharModel, ids: Tensor, seq_len: int, stride: int, device: torch.device,
                  progress: bool = False) -> float:
    """Mean loss over every character of `ids` after the first (`charlm.scoring`).

    A model with a bounded context reads windows of `seq_len` sliding by `stride`, each scoring
    only the characters no earlier window scored: every character past the first window sees at
    least seq_len - stride characters before it (`stride` = `seq_len`: consecutive windows, where a
    window's first characters see little). A recurrent model carries its state through the text.
    """
    model.eval()
    bar = tqdm(total=len(ids) - 1, unit="char", unit_scale=True, disable=not progress, desc="scoring")
    with bar, autocast_for(device):
        scores = score(model, ids, window=seq_len, stride=stride, progress=lambda done: bar.update(done - bar.n))
    return -scores.total / (len(ids) - 1)
