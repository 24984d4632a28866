"""Loss estimates during training and over whole files, as loss, perplexity and bits/char."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from charlm.models import CharModel
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
def evaluate_text(
    model: CharModel, ids: Tensor, seq_len: int, batch_size: int, device: torch.device
) -> float:
    """Mean loss over every character of `ids` after the first, in consecutive windows of `seq_len`.

    Each window starts from an empty context, so a character's context is the
    part of its window before it (on average seq_len / 2 characters).
    """
    model.eval()
    n_windows, rest = divmod(len(ids) - 1, seq_len)
    inputs = ids[: n_windows * seq_len].view(n_windows, seq_len)  # (N, T)
    targets = ids[1 : n_windows * seq_len + 1].view(n_windows, seq_len)  # (N, T)
    starts = range(0, n_windows, batch_size)
    batches = [(inputs[i : i + batch_size], targets[i : i + batch_size]) for i in starts]
    if rest:  # the shorter window at the end
        batches.append((ids[-rest - 1 : -1][None], ids[-rest:][None]))
    total = 0.0
    for x, y in batches:
        with autocast_for(device):
            _, loss = model(x.to(device), y.to(device))
        assert loss is not None
        total += loss.item() * y.numel()
    return total / (len(ids) - 1)
