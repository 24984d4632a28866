"""A recurrent model's one-row CPU step run by ONNX Runtime.

At one row a recurrent step is a few small matrix products and a hundred-odd operators, and eager
torch pays 5 to 10 µs of dispatch for each (bench/cpu_profile.py). ONNX Runtime runs the exported
step as one graph of fused kernels: shakespeare-mingru's model step measured 0.17 to 0.33 ms
against 0.58 to 0.90 eager, pushkin-lstm-attention's 0.43 against 0.70, shakespeare-lstm's 0.13
against 0.17 (docs/benchmarks.md). A GPT's step is left out: ONNX has no state updated in place,
so its key-value cache would be copied in and out of every step (4.2 ms against 0.72 measured).

The step is exported once per weights with torch's ONNX exporter (1 to 4 s) under a name made of
a digest of the weights, the config and the architectures' code: changed weights or code are a new
name, never a stale file. A model directory may carry its step (`python -m charlm.cpu_onnx DIR`
writes it; the bundled recurrent models do, so a first `make serve` exports nothing); otherwise it
is exported into the CPU step cache at the model's first load. Sampling stays torch's, on the
step's logits, so a seeded request draws as the command line's `charlm generate` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from charlm.graphs import one_line
from charlm.models import CharModel, DecodeState
from charlm.sampling import SamplingRows, sample
from charlm.step_results import ID, LOGPROB

logger = logging.getLogger(__name__)

ARCHITECTURES = frozenset({"lstm", "lstm_attention", "mingru"})  # those whose step exports whole
EXPORT_FORMAT = 1  # part of every cached file's name: bump when the exported graph's contract changes
LOGITS = "logits"
SHIPPED_PREFIX = "cpu-step-"  # a step carried in its model directory: cpu-step-<digest>.onnx


def missing() -> str | None:
    """Why ONNX Runtime cannot run here (a package not installed), or None."""
    for package in ("onnxruntime", "onnxscript"):  # found, not imported: importing takes a second
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
    return None


class FunctionalStep(nn.Module):
    """`model.step` with the state as inputs and outputs (ONNX has no state updated in place)."""

    def __init__(self, model: CharModel, state_type: type[DecodeState], fields: list[str]):
        super().__init__()
        self.model, self.state_type, self.fields = model, state_type, fields

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        copied = self.state_type(**{name: t.clone() for name, t in zip(self.fields, state, strict=True)})
        logits = self.model.step(tokens, copied, None)  # (1, V)
        return (logits, *(getattr(copied, name) for name in self.fields))


def state_fields(state: DecodeState) -> list[str]:
    """The names of the state's tensors: the exported step's inputs and outputs, in order."""
    return [field.name for field in dataclasses.fields(state)]


def code_files(model: CharModel) -> list[Path]:
    """The files of charlm that define the model's classes and those of its layers: where a change
    may change its step (an edit to another family's file leaves a shipped step valid). What this
    module adds around the step is versioned by EXPORT_FORMAT instead."""
    classes = {type(module) for module in model.modules()} | set(type(model).__mro__)
    return sorted({Path(inspect.getfile(each)) for each in classes if each.__module__.startswith("charlm.")})


@functools.cache
def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(model: CharModel) -> str:
    """What the exported step depends on: the weights, the config and the code that steps."""
    code = [(path.name, file_digest(path)) for path in code_files(model)]
    hasher = hashlib.sha256(json.dumps([model.architecture, EXPORT_FORMAT, code,
                                        dataclasses.asdict(model.config)], sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:24]


# One export at a time in a process: the exporter is not made for threads (in-process engines load
# in parallel), and quiet_exporter changes process-wide logging and warning filters.
EXPORTING = threading.Lock()


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter logs about absent torchvision operators and its optimiser about each pass, and
    both warn of their own deprecations: none of it is ours to show (a failure still raises)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def export(model: CharModel, path: Path) -> None:
    """Write `model`'s one-row step as an ONNX graph to `path`, whole or not at all."""
    state = model.init_state(1, "cpu")
    fields = state_fields(state)
    example = (torch.zeros(1, dtype=torch.long), *(getattr(state, name) for name in fields))
    step = FunctionalStep(model, type(state), fields).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own (engines of several machines may share a cache volume), renamed over `path`
    # once whole: another engine loading the same model reads a whole file or none.
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        with EXPORTING, torch.no_grad(), quiet_exporter():
            program = torch.onnx.export(step, example, dynamo=True, verbose=False,
                                        input_names=["step_tokens", *fields],
                                        output_names=[LOGITS, *(f"{name}_after" for name in fields)])
            assert program is not None
            program.save(partial)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)


class OnnxStep:
    """The exported step in an ONNX Runtime session, its inputs and outputs bound once to buffers
    (IO binding: no allocation per step); the decoder's row is copied in and out around each run."""

    def __init__(self, session: Any, model: CharModel):
        import onnxruntime

        state = model.init_state(1, "cpu")
        self.fields = state_fields(state)
        self.session = session
        self.tokens = torch.zeros(1, dtype=torch.long).numpy()
        self.inputs = [getattr(state, name).numpy().copy() for name in self.fields]
        self.outputs = [buffer.copy() for buffer in self.inputs]
        self.logits = torch.zeros(1, model.config.vocab_size)  # (1, V), the draw reads it in place
        self.binding = session.io_binding()
        self.binding.bind_cpu_input("step_tokens", self.tokens)
        named = [(LOGITS, self.logits.numpy())]
        named += [(f"{name}_after", buffer) for name, buffer in zip(self.fields, self.outputs, strict=True)]
        for name, buffer in zip(self.fields, self.inputs, strict=True):
            self.binding.bind_cpu_input(name, buffer)
        for name, buffer in named:
            self.binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
        self.run_options = onnxruntime.RunOptions()

    def run(self, state: DecodeState, sampling: SamplingRows, tokens: Tensor, output: Tensor,
            filters: bool = True) -> None:
        """`cpu_step.plain_step`'s contract: one row's step, draw and results, written in place;
        `filters` as `sample`'s."""
        self.tokens[0] = int(tokens[0])
        for name, buffer in zip(self.fields, self.inputs, strict=True):
            buffer[...] = getattr(state, name).numpy()  # the decoder's row: a strided view
        self.session.run_with_iobinding(self.binding, self.run_options)
        for name, buffer in zip(self.fields, self.outputs, strict=True):
            getattr(state, name).copy_(torch.from_numpy(buffer))
        draw = sample(self.logits, sampling, controls=False, filters=filters)
        tokens.copy_(draw.ids)
        output[:, ID] = draw.ids
        output[:, LOGPROB] = draw.logprobs


def session_for(path: Path) -> Any:
    """One thread, sequential: at one row the kernels are too small to share, and an engine
    process's threads are torch's to use."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclasses.dataclass(frozen=True)
class Loaded:
    step: OnnxStep
    seconds: float
    source: str  # "exported", "cache" or "model directory"


def shipped_name(model_digest: str) -> str:
    """The file name of a step carried in its model directory."""
    return f"{SHIPPED_PREFIX}{model_digest}.onnx"


def load(model: CharModel, cache: Path, name: str, model_dir: Path | None = None) -> Loaded:
    """`model`'s step from its directory (`model_dir`) or the cache, exported into the cache first
    if in neither. A file that ONNX Runtime cannot load is passed over: a shipped one for the cache,
    a cached one for a new export. Raises on any other failure."""
    started = time.perf_counter()
    model_digest = digest(model)
    shipped = model_dir / shipped_name(model_digest) if model_dir is not None else None
    step = None
    if shipped is not None and shipped.is_file():
        step, source, path = loaded_or_none(shipped, model, name), "model directory", shipped
    if step is None:
        path = cache / f"{model.architecture}-{model_digest}.onnx"
        source = "cache" if path.exists() else "exported"
        step = loaded_or_none(path, model, name) if source == "cache" else None
        if step is None:
            source = "exported"
            export(model, path)
            step = OnnxStep(session_for(path), model)
    seconds = time.perf_counter() - started
    logger.info("%s: CPU step run by ONNX Runtime, from the %s in %.1f s (%s)", name,
                "exporter" if source == "exported" else source, seconds, path)
    return Loaded(step, seconds, source)


def loaded_or_none(path: Path, model: CharModel, name: str) -> OnnxStep | None:
    """The step in `path`, or None (logged) where ONNX Runtime cannot load it: a file cut short, or
    written by a newer exporter than this runtime knows."""
    try:
        return OnnxStep(session_for(path), model)
    except Exception as exc:  # onnxruntime's own errors share no base class
        logger.warning("%s: ONNX Runtime cannot load %s, passed over: %s", name, path, one_line(exc))
        return None


def export_beside(model_dir: Path) -> Path:
    """Write the step of the model in `model_dir` into it, replacing any step of other weights."""
    from charlm.checkpoint import load_model  # here: the command below is its only user

    model = load_model(model_dir).model
    path = model_dir / shipped_name(digest(model))
    export(model, path)
    for stale in model_dir.glob(f"{SHIPPED_PREFIX}*.onnx"):
        if stale != path:
            stale.unlink()
    return path


if __name__ == "__main__":
    # python -m charlm.cpu_onnx DIR...: ship each model directory's step with it (the bundled ones).
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for argument in sys.argv[1:]:
        logger.info("wrote %s", export_beside(Path(argument)))
