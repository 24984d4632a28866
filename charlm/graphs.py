"""CUDA graphs: a fixed-shape computation recorded once and replayed with one launch.

A decode step is dozens of small kernels; launched one by one from Python, the host
time dwarfs the GPU time. Recorded as a graph, a step costs one launch. Capture can
fail (an operation that synchronises with the host, a kernel that cannot be
captured): the caller then runs the computation eagerly. `try_compile` compiles such a
computation first (torch.compile), with the same fallback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)



def one_line(exc: BaseException) -> str:
    """A failure as the one line a log and /info give of it: its type and its message's first line
    (compilers' and exporters' messages run to pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"

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


def try_compile(name: str, compute: Callable[[], object]) -> tuple[Callable[[], object] | None, float, str | None]:
    """`compute` compiled by torch.compile (inductor; fixed shapes) and run once, which is when the
    compilation happens, so that its time is paid here: (compiled, seconds, None), or
    (None, seconds, reason) with the reason logged, and the caller keeps `compute`.

    Compiled before a graph is captured, the layer norms, bias adds, GELU, residuals and sampling
    tail of a decode step fuse into fewer kernels, and the graph replays those."""
    started = time.perf_counter()
    try:
        compiled = torch.compile(compute, dynamic=False)
        compiled()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception as exc:  # a compiler problem means today's step, never a failed start
        seconds = time.perf_counter() - started
        reason = one_line(exc)
        logger.warning("%s: torch.compile failed after %.1f s, decoding with the step as written: %s",
                       name, seconds, reason)
        return None, seconds, reason
    seconds = time.perf_counter() - started
    logger.info("%s: compiled by torch.compile in %.1f s", name, seconds)
    return compiled, seconds, None


@dataclasses.dataclass
class PreparedStep:
    """A fixed-shape step made ready: `run` runs it eagerly (compiled, or as written), `graph`
    replays it (None: run it eagerly); what compiling cost and, if it failed, why."""

    run: Callable[[], object]
    graph: torch.cuda.CUDAGraph | None
    compile_s: float = 0.0
    compile_error: str | None = None


def prepare_step(name: str, compute: Callable[[], object], *, compile: bool, graph: bool) -> PreparedStep:
    """Compile `compute` (when asked; `try_compile`) and capture it as a graph (when asked;
    `try_capture`). A compiled step that will not capture gives way to the step as written."""
    run, seconds, error = compute, 0.0, None
    if compile:
        compiled, seconds, error = try_compile(name, compute)
        run = compiled or compute
    captured = try_capture(name, run) if graph else None
    if graph and captured is None and run is not compute:
        logger.warning("%s: the compiled step would not capture; capturing the step as written", name)
        run, error = compute, "the compiled step would not capture as a CUDA graph"
        captured = try_capture(name, run)
    return PreparedStep(run, captured, seconds, error)
