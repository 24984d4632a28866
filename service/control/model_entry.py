"""One model directory as the control plane holds it: its served version, its engine, its status;
and how a directory becomes one (an engine started on it; a failure is kept, never raised)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from charlm.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, ModelDirError, load_model
from service.control.engines import EngineHandle, EngineProcess, EngineThread, socket_path
from service.engine.engine import Engine, EngineClosed
from service.engine.sequences import EngineMetrics
from service.engine.specs import EngineSpec, ModelInfo
from service.settings import Settings

logger = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int] | None, ...]  # per model file: (name, size, mtime), None if absent


def directory_signature(path: Path) -> Signature:
    """What a poll compares to notice a change: the size and time of each file a model is loaded
    from (the loss curve, metrics and card change without changing the model)."""
    signature: list[tuple[str, int, int] | None] = []
    for name in (WEIGHTS_FILE, VOCAB_FILE, CONFIG_FILE):
        try:
            info = (path / name).stat()
            signature.append((name, info.st_size, info.st_mtime_ns))
        except OSError:
            signature.append(None)
    return tuple(signature)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How every model's engine is made, decided once at startup."""

    settings: Settings
    device: torch.device
    dtype: torch.dtype
    max_batch_size: int
    threads: int  # intra-op CPU threads per engine
    runtime_dir: Path  # where engine processes listen
    engine_metrics: Callable[[str], EngineMetrics]  # for an engine in a thread, per model name
    serials: itertools.count[int] = dataclasses.field(default_factory=itertools.count)


@dataclasses.dataclass
class ModelEntry:
    name: str
    path: Path
    engine: EngineHandle | None = None
    error: str | None = None
    signature: Signature = ()  # of the directory when this version was read
    loaded_at: float = 0.0  # Unix time the version was loaded
    load_s: float = 0.0  # seconds it took to load and start
    # "loaded" (its engine made: ready or failed) or else why it has no engine: "loading" (it starts),
    # "restarting" (it died or hung; the keeper starts another), "standby" (not loaded until a
    # request wants it: CHARLM_MAX_LOADED, CHARLM_KEEP_ALIVE) or "unloaded" (by an administrator).
    phase: str = "loaded"
    reload_error: str | None = None  # why the directory's newer contents are not served (this version is)
    known: ModelInfo | None = None  # what its last engine said of it, while it has none (on standby)

    @property
    def info(self) -> ModelInfo | None:
        return self.engine.info if self.engine is not None else self.known

    @property
    def version(self) -> str | None:
        """The weights' fingerprint."""
        return self.info.version if self.info is not None else None

    @property
    def status(self) -> str:
        """ready, failed, or the phase of a model without an engine (loading, restarting, standby, unloaded)."""
        if self.phase != "loaded":
            return self.phase
        return "ready" if self.engine is not None and self.engine.failure is None else "failed"

    @property
    def reason(self) -> str | None:
        """Why a failed model is not served: it did not load or start, or its engine process died."""
        return self.engine.failure if self.engine is not None and self.engine.failure else self.error

    def start(self) -> bool:
        """Start the engine (it loads and warms up first); one that fails is kept as failed, with its
        reason. True when it started."""
        if self.engine is None:
            return False
        started = time.monotonic()
        try:
            self.engine.start()
        except EngineClosed as exc:
            logger.error("model %s failed to start: %s", self.name, exc)
            self.engine, self.error = None, str(exc)
            return False
        self.loaded_at, self.load_s = time.time(), self.load_s + time.monotonic() - started
        info = self.info
        assert info is not None
        logger.info("model %s: %s, %s parameters, %d characters, version %s", self.name, info.architecture,
                    f"{info.parameters:,}", len(info.chars), info.version)
        return True


def standby_entry(path: Path) -> ModelEntry:
    """A model directory served on demand: its engine starts at the first request that wants it."""
    return ModelEntry(path.name, path, signature=directory_signature(path), phase="standby")


def make_entry(path: Path, config: EngineConfig) -> ModelEntry:
    """A model directory's entry with its engine made, not started: in a process of its own (which
    loads the weights, on the device) or in a thread of this one (the weights loaded here)."""
    settings = config.settings
    choose_dtype = settings.dtype == "auto" and config.device.type == "cuda"  # the engine times bf16 against fp32
    dtype = torch.float32 if choose_dtype else config.dtype  # weights at full precision until then
    compile_step = None if settings.compile else False  # None: where it pays (CUDA)
    entry = ModelEntry(path.name, path, signature=directory_signature(path))
    started = time.monotonic()
    if settings.engine_process:
        address = socket_path(config.runtime_dir, next(config.serials))
        spec = EngineSpec(path.name, path, str(config.device), dtype, config.max_batch_size, settings.max_queued,
                          settings.cuda_graphs, config.threads, settings.log_level, address=address,
                          compile_step=compile_step, choose_dtype=choose_dtype)
        entry.engine = EngineProcess(spec, settings.engine_hang_s)
        return entry
    try:
        loaded = load_model(path, device=config.device, dtype=dtype)
    except ModelDirError as exc:
        entry.error = str(exc)
        logger.error("model %s failed to load: %s", path.name, exc)
        return entry
    engine = Engine(path.name, loaded.model, loaded.vocab, config.max_batch_size, settings.max_queued,
                    config.engine_metrics(path.name), cuda_graphs=settings.cuda_graphs, compile_step=compile_step,
                    choose_dtype=choose_dtype, model_dir=loaded.path)
    entry.engine = EngineThread(engine, loaded)
    entry.load_s = time.monotonic() - started
    return entry


def start_entry(path: Path, config: EngineConfig) -> ModelEntry:
    """A model directory's entry with its engine started (or failed, with the reason: whatever goes
    wrong, an out-of-memory error or no process to be had, is kept as the model's failure)."""
    try:
        entry = make_entry(path, config)
        entry.start()
    except Exception as exc:
        logger.exception("model %s could not start", path.name)
        return ModelEntry(path.name, path, signature=directory_signature(path), error=f"could not start: {exc}")
    return entry
