"""CUDA graphs: a fixed-shape computation recorded once and replayed with one launch.

A decode step is dozens of small kernels; launched one by one from Python, the host
time dwarfs the GPU time. Recorded as a graph, a step costs one launch. Capture can
fail (an operation that synchronises with the host, a kernel that cannot be
captured): the caller then runs the computation eagerly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


def capture(compute: Callable[[], object], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Record `compute` as a graph after `warmup` eager runs (which also run its lazy
    initialisation, such as cuBLAS handles, outside the capture). Replaying the graph
    repeats it on the same tensors: inputs and outputs must live in fixed buffers."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            compute()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: another engine's thread may use the GPU while this one captures.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        compute()
    return graph


def try_capture(name: str, compute: Callable[[], object]) -> torch.cuda.CUDAGraph | None:
    """`capture`, or None with the reason logged: the caller falls back to eager runs."""
    try:
        return capture(compute)
    except Exception as exc:  # any failure to capture means eager, never a failed start
        logger.warning("%s: CUDA graph capture failed, decoding eagerly instead: %s", name, exc)
        with contextlib.suppress(Exception):  # work queued before the failure ends first
            torch.cuda.synchronize()
        return None
