"""The CPU decode step compiled to C++: torch.compile's inductor with its C++ wrapper.

On a CPU a small model's step is almost all per-operator overhead (bench/cpu_profile.py: ~190
operators a step for shakespeare-gpt, against tens of µs of arithmetic). Inductor fuses the
pointwise work into C++ loops and, with `cpp_wrapper`, calls every kernel from one C++ function:
the Python per operator is gone. The step is compiled for one row, the whole window (`filled`
None: shapes that never change) and the plain variant: a lone request without the sampling
controls, grammar or alternatives; everything else stays eager. Compiled for any number of rows
(a dynamic batch dimension), shakespeare-gpt's step at 32 rows measured 3.5 times slower than
eager (17 ms against 4.8: attention over the whole window, loops over symbolic sizes), while at
one row it took 0.64 ms against 1.11.

`CHARLM_CPU_BACKEND` chooses: `eager` (the step as written), `inductor`, or `auto` (inductor
where `AUTO_INDUCTOR` lists the architecture). Compiling takes 10 to 50 seconds a model on a
2-core machine, paid at warm-up: more than a whole `make serve` start, so `auto` leaves it out
for now. Compiling in a background thread after startup was measured (docs/benchmarks.md): at
the lowest priority (nice 19) it leaves the eager steps as fast as before (at normal priority it
made them 3 times slower, the GIL and the C++ compiler taking their turns), but a served request
would then change from the eager to the compiled step part-way, and the two differ by float32
rounding: a lone seeded request would no longer equal `charlm generate` exactly, as docs/api-semantics.md
promises. That promise, not the speed, keeps `auto` eager.

Inductor's own cache, kept in `cache_dir()`, makes a restart of the same model cheaper (its keys
cover the code and the shapes, not the weights, which stay inputs). A compile that
fails logs why and leaves the step eager: the service never fails to start for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from charlm.models import CharModel, DecodeState
from charlm.sampling import SamplingRows, sample
from charlm.step_results import ID, LOGPROB

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "inductor")
# Where `auto` compiles: families whose step measured faster compiled, counting the compile's
# own cost at startup (bench/cpu_profile.py; docs/benchmarks.md).
# None yet: compiling would multiply the startup time (see above).
AUTO_INDUCTOR: frozenset[str] = frozenset()

COMPILER = "inductor"  # torch.compile's backend; tests trace with "aot_eager" (seconds, not tens)

StepRun = Callable[[DecodeState, SamplingRows, Tensor, Tensor], None]


def requested() -> str:
    """CHARLM_CPU_BACKEND, checked: one of BACKENDS (default auto)."""
    value = os.environ.get("CHARLM_CPU_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"CHARLM_CPU_BACKEND must be one of {', '.join(BACKENDS)}, not {value!r}")
    return value


def cache_dir() -> Path:
    """Where inductor keeps what it compiled: CHARLM_CPU_CACHE, else ~/.cache/charlm/inductor
    (models/ may be read-only in a container)."""
    configured = os.environ.get("CHARLM_CPU_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "charlm" / "inductor"


def choose(model: CharModel, choice: str | None = None) -> tuple[str, str]:
    """(backend, why) for `model` on a CPU: `choice` (default CHARLM_CPU_BACKEND) resolved."""
    choice = requested() if choice is None else choice
    if choice != "auto":
        return choice, f"CHARLM_CPU_BACKEND is {choice!r}"
    if model.architecture in AUTO_INDUCTOR:
        return "inductor", f"{model.architecture} steps measured faster compiled on a CPU"
    return "eager", "auto: compiling (25 to 50 s a model) would outlast the startup; CHARLM_CPU_BACKEND=inductor"


def plain_step(model: CharModel) -> StepRun:
    """The step of rows that use no sampling controls, grammar or alternatives: model, draw, and
    the drawn ids and log-probabilities written to the next inputs and the packed results."""

    def run(state: DecodeState, sampling: SamplingRows, tokens: Tensor, output: Tensor) -> None:
        logits = model.step(tokens, state, None)  # (B, V), the whole window: shapes fixed but for B
        draw = sample(logits, sampling, controls=False)
        tokens.copy_(draw.ids)
        output[:, ID] = draw.ids
        output[:, LOGPROB] = draw.logprobs

    return run


@dataclasses.dataclass
class CompiledStep:
    """`plain_step` compiled, with what compiling cost."""

    run: StepRun
    compile_s: float


def compile_step(model: CharModel, example: tuple[DecodeState, SamplingRows, Tensor, Tensor],
                 name: str) -> CompiledStep | str:
    """`plain_step(model)` compiled for one row and run once on `example` (views of a scratch
    row, which it overwrites), so that compiling is paid here; or why it could not be, logged."""
    import torch._inductor.config as inductor_config  # here: importing inductor takes a second

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    started = time.perf_counter()
    try:
        # allow_rnn: the LSTMs' steps read their weights off nn.LSTM modules, which dynamo
        # otherwise refuses to trace (it cannot trace their cuDNN call; `step` never makes it).
        with inductor_config.patch(cpp_wrapper=True), torch._dynamo.config.patch(allow_rnn=True):
            compiled = torch.compile(plain_step(model), backend=COMPILER, dynamic=False, fullgraph=True)
            compiled(*example)
    except Exception as exc:  # any failure means the step as written, never a failed start
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        logger.warning("%s: compiling the CPU step failed, decoding eagerly: %s", name, reason)
        return reason
    seconds = time.perf_counter() - started
    logger.info("%s: CPU step compiled by inductor in %.1f s", name, seconds)
    return CompiledStep(compiled, seconds)


def prepare(model: CharModel, example: tuple[DecodeState, SamplingRows, Tensor, Tensor],
            name: str) -> tuple[CompiledStep | None, dict[str, object]]:
    """The backend chosen for `model`'s one-row step on a CPU, compiled if it is inductor (on
    `example`, views of a scratch row), and what /info reports of the choice."""
    backend, why = choose(model)
    if backend != "inductor":
        return None, {"cpu_backend": "eager", "cpu_backend_reason": why}
    compiled = compile_step(model, example, name)
    if isinstance(compiled, str):
        return None, {"cpu_backend": "eager", "cpu_backend_reason": f"{why}, but compiling failed: {compiled}"}
    return compiled, {"cpu_backend": "inductor", "cpu_backend_reason": why,
                      "cpu_compile_s": round(compiled.compile_s, 1)}
