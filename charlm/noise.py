"""The uniform numbers behind sampling: a hash of (seed, position), exact on every device.

A sequence's i-th draw uses the i-th number of its own stream, whatever else shares the batch,
with no generator object, so a draw can live inside a CUDA graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF


def noise_key(seed: int) -> int:
    """The 32-bit key of a seed's noise stream, computed once per sequence on the host."""
    key = 0
    for part in (seed & MASK32, seed >> 32):
        key = mix32(key ^ part ^ 0x9E3779B9)
    return key


def mix32(x: Any) -> Any:
    """An avalanching permutation of 32-bit values (xor-shift-multiply), for Python ints and for
    int64 tensors alike. The multipliers are below 2**31, so no product leaves int64: the result
    is exact on every device."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK32
    return x ^ (x >> 16)


def uniform_noise(key: Tensor, counter: Tensor) -> Tensor:
    """One number in [0, 1) per row from (key, counter), both (B,) int64; float32 (B,).

    A Weyl sequence through the hash (as SplitMix does): the i-th draw of a stream
    hashes key + i * 0x61C88647. 24 bits, the precision of float32: every value is
    exact, so CPU and GPU agree. On a CPU the same integer arithmetic runs in NumPy,
    whose operations on a few values cost a fraction of torch's.
    """
    if key.device.type == "cpu":
        return torch.from_numpy(weyl_hash(key.numpy(), counter.numpy()))
    h = mix32((key + (counter & MASK32) * 0x61C88647) & MASK32)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def weyl_hash(key: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """`uniform_noise` on NumPy arrays (int64), float32."""
    h = mix32((key + (counter & MASK32) * 0x61C88647) & MASK32)
    return (h >> 8).astype(np.float32) * np.float32(1.0 / (1 << 24))
