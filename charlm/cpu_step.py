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

`CHARLM_CPU_BACKEND` chooses: `eager` (the step as written), `inductor`, `onnx` (ONNX Runtime,
`charlm.cpu_onnx`: recurrent families only), or `auto`: `onnx` for the families `AUTO_ONNX` lists
where ONNX Runtime is installed (exporting takes 1 to 4 s, once per weights), eager otherwise.
Compiling takes 10 to 50 seconds a model on a 2-core machine, paid at warm-up: more than a whole
`make serve` start, so `auto` never compiles. Compiling in a background thread after startup was
measured (docs/benchmarks.md): at the lowest priority (nice 19) it leaves the eager steps as fast
as before (at normal priority it made them 3 times slower, the GIL and the C++ compiler taking
their turns), but a served request would then change from the eager to the compiled step
part-way, and the two differ by float32 rounding: a lone seeded request would no longer equal
`charlm generate` exactly, as docs/api-semantics.md promises. That promise, not the speed, keeps it
at warm-up.

Inductor's own cache, kept in `cache_dir() / "inductor"`, makes a restart of the same model
cheaper (its keys cover the code and the shapes, not the weights, which stay inputs). A compile or
export that fails logs why and leaves the step eager: the service never fails to start for it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from charlm import cpu_onnx
from charlm.graphs import one_line
from charlm.models import CharModel, DecodeState
from charlm.sampling import SamplingRows, sample
from charlm.step_results import ID, LOGPROB

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "inductor", "onnx")
# Where `auto` compiles: families whose step measured faster compiled, counting the compile's
# own cost at startup (bench/cpu_profile.py; docs/benchmarks.md).
# None yet: compiling would multiply the startup time (see above).
AUTO_INDUCTOR: frozenset[str] = frozenset()
# Where `auto` runs the step in ONNX Runtime: measured at one row (docs/benchmarks.md), the
# engine's step took 0.34 ms against 0.66 eager (shakespeare-mingru) and 0.65 against 0.86 to 0.93
# (pushkin-lstm-attention); the plain LSTM's 0.30 against 0.31 does not pay for the runtime's memory.
AUTO_ONNX = frozenset({"lstm_attention", "mingru"})

COMPILER = "inductor"  # torch.compile's backend; tests trace with "aot_eager" (seconds, not tens)

StepRun = Callable[[DecodeState, SamplingRows, Tensor, Tensor], None]


def requested() -> str:
    """CHARLM_CPU_BACKEND, checked: one of BACKENDS (default auto)."""
    value = os.environ.get("CHARLM_CPU_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"CHARLM_CPU_BACKEND must be one of {', '.join(BACKENDS)}, not {value!r}")
    return value


def cache_dir() -> Path:
    """Where the CPU steps are kept once compiled or exported: CHARLM_CPU_CACHE, else
    ~/.cache/charlm/cpu-step (not beside the model: models/ may be read-only in a container), else,
    for a user with no home to write in (the image's), charlm-cpu-step-UID in the temporary folder."""
    if configured := os.environ.get("CHARLM_CPU_CACHE"):
        return Path(configured)
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no entry in the user database
        home = None
    if home is not None and os.access(home, os.W_OK):
        return home / ".cache" / "charlm" / "cpu-step"
    return Path(tempfile.gettempdir()) / f"charlm-cpu-step-{os.getuid()}"


def choose(model: CharModel, choice: str | None = None) -> tuple[str, str]:
    """(backend, why) for `model` on a CPU: `choice` (default CHARLM_CPU_BACKEND) resolved."""
    choice = requested() if choice is None else choice
    if choice != "auto":
        return choice, f"CHARLM_CPU_BACKEND is {choice!r}"
    if model.architecture in AUTO_INDUCTOR:
        return "inductor", f"{model.architecture} steps measured faster compiled on a CPU"
    if model.architecture in AUTO_ONNX:
        if (problem := cpu_onnx.missing()) is not None:
            return "eager", f"auto: ONNX Runtime would run {model.architecture} steps faster, but {problem}"
        return "onnx", f"auto: {model.architecture} steps measured faster in ONNX Runtime on a CPU"
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
class PreparedStep:
    """`plain_step` compiled, or exported and loaded, with the seconds that took."""

    run: StepRun
    seconds: float
    # The same for a row known to be neither greedy nor filtered by top-k or top-p, where the draw
    # can skip that arithmetic (`sample`'s `filters`), or None where `run` serves both. A compiled
    # step has none: the flag would be a second compile, at the first such request.
    unfiltered: StepRun | None = None
    origin: str = "compiled"  # or, exported: "exported", "cache" or "model directory" (`cpu_onnx.load`)

    def run_for(self, filters: bool) -> StepRun:
        return self.run if filters or self.unfiltered is None else self.unfiltered


def compile_step(model: CharModel, example: tuple[DecodeState, SamplingRows, Tensor, Tensor],
                 name: str) -> PreparedStep | str:
    """`plain_step(model)` compiled for one row and run once on `example` (views of a scratch
    row, which it overwrites), so that compiling is paid here; or why it could not be, logged."""
    import torch._inductor.config as inductor_config  # here: importing inductor takes a second

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    started = time.perf_counter()
    try:
        # allow_rnn: the LSTMs' steps read their weights off nn.LSTM modules, which dynamo
        # otherwise refuses to trace (it cannot trace their cuDNN call; `step` never makes it).
        with inductor_config.patch(cpp_wrapper=True), torch._dynamo.config.patch(allow_rnn=True):
            compiled = torch.compile(plain_step(model), backend=COMPILER, dynamic=False, fullgraph=True)
            compiled(*example)
    except Exception as exc:  # any failure means the step as written, never a failed start
        reason = one_line(exc)
        logger.warning("%s: compiling the CPU step failed, decoding eagerly: %s", name, reason)
        return reason
    seconds = time.perf_counter() - started
    logger.info("%s: CPU step compiled by inductor in %.1f s", name, seconds)
    return PreparedStep(compiled, seconds)


def exported_step(model: CharModel, example: tuple[DecodeState, SamplingRows, Tensor, Tensor], name: str,
                  model_dir: Path | None = None) -> PreparedStep | str:
    """`model`'s step in ONNX Runtime (`charlm.cpu_onnx`), run once on `example` (views of a scratch
    row, which it overwrites) so that a step that cannot run fails here; or why it cannot be, logged."""
    if model.architecture not in cpu_onnx.ARCHITECTURES:
        return f"ONNX Runtime runs the recurrent families only, not {model.architecture}"
    if (dtype := next(model.parameters()).dtype) != torch.float32:
        # ONNX Runtime's CPU kernels have no bfloat16 matrix product, and the step's buffers are float32.
        return f"the exported step is float32 only, and this model decodes in {str(dtype).removeprefix('torch.')}"
    if (problem := cpu_onnx.missing()) is not None:
        return problem
    try:
        loaded = cpu_onnx.load(model, cache_dir() / "onnx", name, model_dir)
        loaded.step.run(*example)
    except Exception as exc:  # any failure means the step as written, never a failed start
        reason = one_line(exc)
        logger.warning("%s: running the CPU step in ONNX Runtime failed, decoding eagerly: %s", name, reason)
        return reason
    step = loaded.step
    return PreparedStep(step.run, loaded.seconds, functools.partial(step.run, filters=False), loaded.source)


def prepare(model: CharModel, example: tuple[DecodeState, SamplingRows, Tensor, Tensor],
            name: str, model_dir: Path | None = None) -> tuple[PreparedStep | None, dict[str, object]]:
    """The backend chosen for `model`'s one-row step on a CPU, compiled or exported if it is not
    eager (a compile runs on `example`, views of a scratch row; an exported step may come from
    `model_dir`), and what /info reports of it."""
    backend, why = choose(model)
    if backend == "onnx":
        exported = exported_step(model, example, name, model_dir)
        if isinstance(exported, str):
            return None, {"cpu_backend": "eager", "cpu_backend_reason": f"{why}, but {exported}"}
        return exported, {"cpu_backend": "onnx", "cpu_backend_reason": why, "cpu_step_from": exported.origin,
                          "cpu_prepare_s": round(exported.seconds, 2)}
    if backend != "inductor":
        return None, {"cpu_backend": "eager", "cpu_backend_reason": why}
    compiled = compile_step(model, example, name)
    if isinstance(compiled, str):
        return None, {"cpu_backend": "eager", "cpu_backend_reason": f"{why}, but compiling failed: {compiled}"}
    return compiled, {"cpu_backend": "inductor", "cpu_backend_reason": why,
                      "cpu_prepare_s": round(compiled.seconds, 1)}
