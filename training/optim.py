"""AdamW with weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Decay weight matrices and embeddings; leave biases and norm gains alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=device.type == "cuda"
    )


def learning_rate(iteration: int, config: TrainConfig) -> float:
    """Linear warmup to lr, cosine decay to min_lr at decay_iters, then min_lr."""
    if iteration < config.warmup_iters:
        return config.lr * (iteration + 1) / (config.warmup_iters + 1)
    if iteration >= config.decay_iters:
        return config.min_lr
    progress = (iteration - config.warmup_iters) / max(1, config.decay_iters - config.warmup_iters)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)
