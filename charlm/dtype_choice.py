"""`dtype auto`: the faster of bfloat16 and float32 for one model on its device, timed once at startup.

bfloat16 halves the bytes a GPT decode step reads, and a step is bound by those bytes; cuDNN's LSTM
measured the other way on an H200 (bfloat16 at 0.53x float32's speed at batch 256). Which wins
depends on the family, the model's size, the batch and the card, so no table is trusted: each
candidate's decode step is captured as a CUDA graph at the serving batch size and timed, and the
faster is kept (bfloat16 on a near tie: half the memory). On a CPU, float32 without timing: bfloat16
matrix products have no fast path on most CPUs, and float32 is what the CPU engine is measured in.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import torch

from charlm.graphs import try_capture
from charlm.models import CharModel
from charlm.models.lstm import move_compacted

logger = logging.getLogger(__name__)

CANDIDATES = (torch.bfloat16, torch.float32)
TIE = 0.03  # float32 must be this much faster to win: bfloat16 holds half the bytes
TIMED_STEPS = 50


@dataclasses.dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str

    def describe(self) -> dict[str, str]:
        """For /info: which dtype, and why."""
        return {"dtype": dtype_name(self.dtype), "dtype_reason": self.reason}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def convert(model: CharModel, dtype: torch.dtype) -> CharModel:
    """`model` in `dtype`, in place (recurrent weights kept in one cuDNN buffer)."""
    move_compacted(model, dtype=dtype)
    return model


@torch.no_grad()
def step_ms(model: CharModel, batch: int, steps: int = TIMED_STEPS) -> float:
    """Milliseconds per decode step of `model` at `batch` rows whose windows are partly filled:
    a replayed CUDA graph of `step` (the step as the engine runs it, less sampling), or the
    eager step where capture fails or on a CPU."""
    device = next(model.parameters()).device
    model.prepare_decoding()
    state = model.init_state(batch, device)
    filled = min(model.decode_window or 64, 64) // 2  # attention reads a realistic share of the window
    if filled:
        model.prefill(torch.zeros(batch, filled, dtype=torch.long, device=device), state)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)

    def compute() -> None:
        model.step(tokens, state)

    graph = try_capture("dtype timing", compute) if device.type == "cuda" else None
    run = graph.replay if graph is not None else compute
    for _ in range(3):
        run()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize(device)
    return (time.perf_counter() - started) / steps * 1000


def choose_dtype(model: CharModel, batch: int) -> DtypeChoice:
    """The faster dtype for `model` (on its device, in float32: no precision lost yet) decoding
    `batch` rows, with the timings that decided it; float32 on a CPU."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return DtypeChoice(torch.float32, "float32 on a CPU (dtype auto)")
    started = time.perf_counter()
    try:
        times = {dtype: step_ms(convert(copy.deepcopy(model), dtype), batch) for dtype in CANDIDATES}
    except Exception as exc:  # timing is an optimisation: never a failed start
        reason = f"dtype auto: timing failed ({type(exc).__name__}: {exc}); bfloat16, the CUDA default"
        logger.warning("%s", reason)
        return DtypeChoice(torch.bfloat16, reason)
    bf16, fp32 = times[torch.bfloat16], times[torch.float32]
    chosen = torch.float32 if fp32 < bf16 * (1 - TIE) else torch.bfloat16
    reason = (f"dtype auto: a decode step at batch {batch} took {bf16:.3f} ms in bfloat16 and {fp32:.3f} ms in "
              f"float32 (timed at startup in {time.perf_counter() - started:.1f} s)")
    logger.info("%s: %s", dtype_name(chosen), reason)
    return DtypeChoice(chosen, reason)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
