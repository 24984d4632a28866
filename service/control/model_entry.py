"""One model directory as the service holds it: its loaded version, its engine, its status; and how
a directory becomes one (load the weights, make the engine; a failure is kept, never raised)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from charlm.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, LoadedModel, ModelDirError, load_model
from service.engine.engine import Engine, EngineClosed
from service.engine.process import EngineSpec
from service.frontend.engine_client import EngineClient
from service.frontend.metrics import ServiceMetrics
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
    metrics: ServiceMetrics
    device: torch.device
    dtype: torch.dtype
    max_batch_size: int
    threads: int  # intra-op CPU threads per engine


@dataclasses.dataclass
class ModelEntry:
    name: str
    path: Path
    loaded: LoadedModel | None = None  # with engine processes, a CPU copy that describes the model
    engine: Engine | EngineClient | None = None
    error: str | None = None
    signature: Signature = ()  # of the directory when this version was read
    loaded_at: float = 0.0  # Unix time the version was loaded
    load_s: float = 0.0  # seconds it took to load and start
    phase: str = "loaded"  # "loading" (not yet servable) or "unloaded" (by an administrator) otherwise
    reload_error: str | None = None  # why the directory's newer contents are not served (this version is)

    @property
    def version(self) -> str | None:
        """The weights' fingerprint."""
        return self.loaded.fingerprint if self.loaded is not None else None

    @property
    def status(self) -> str:
        """ready, loading, unloaded or failed."""
        if self.phase != "loaded":
            return self.phase
        return "ready" if self.engine is not None and self.engine.failure is None else "failed"

    @property
    def reason(self) -> str | None:
        """Why a failed model is not served: it did not load or start, or its engine process died."""
        return self.engine.failure if self.engine is not None and self.engine.failure else self.error

    def start(self, metrics: ServiceMetrics) -> None:
        """Start the engine (it warms up first); one that fails is kept as failed, with its reason."""
        if self.engine is None:
            return
        started = time.monotonic()
        try:
            self.engine.start()
            self.load_s += time.monotonic() - started
        except EngineClosed as exc:
            logger.error("model %s failed to start: %s", self.name, exc)
            metrics.model_load_failures.labels(self.name).inc()
            self.engine.join()
            self.engine, self.error = None, str(exc)

    def describe(self) -> dict[str, object]:
        """The status and what goes with it, for /health, /info and /admin/models."""
        status = self.status
        described: dict[str, object] = {"status": status}
        if status == "ready" and self.engine is not None:
            described.update(version=self.version, active=self.engine.active, queued=self.engine.queued)
        elif status == "failed":
            described["error"] = self.reason
        if self.reload_error is not None:
            described["reload_error"] = self.reload_error
        return described


def load_entry(path: Path, config: EngineConfig) -> ModelEntry:
    """Check and load a model directory and make its engine: in a process of its own (which loads the
    weights again, on the device; the copy here, on the CPU, only describes the model) or in a
    thread of this one. The engine is not started yet."""
    settings, device, dtype = config.settings, config.device, config.dtype
    choose_dtype = settings.dtype == "auto" and device.type == "cuda"  # the engine times bf16 against fp32
    dtype = torch.float32 if choose_dtype else dtype  # weights at full precision until then
    compile_step = None if settings.compile else False  # None: where it pays (CUDA)
    entry = ModelEntry(path.name, path, signature=directory_signature(path))
    started = time.monotonic()
    try:
        entry.loaded = load_model(path, device="cpu" if settings.engine_process else device, dtype=dtype)
    except ModelDirError as exc:
        entry.error = str(exc)
        logger.error("model %s failed to load: %s", path.name, exc)
        config.metrics.model_load_failures.labels(path.name).inc()
        return entry
    loaded = entry.loaded
    if settings.engine_process:
        spec = EngineSpec(path.name, path, str(device), dtype, config.max_batch_size, settings.max_queued,
                          settings.cuda_graphs, config.threads, settings.log_level, loaded.fingerprint,
                          compile_step, choose_dtype)
        entry.engine = EngineClient(spec, config.metrics)
    else:
        entry.engine = Engine(path.name, loaded.model, loaded.vocab, config.max_batch_size, settings.max_queued,
                              config.metrics.for_model(path.name), cuda_graphs=settings.cuda_graphs,
                              compile_step=compile_step, choose_dtype=choose_dtype)
    entry.loaded_at, entry.load_s = time.time(), time.monotonic() - started
    logger.info("model %s: %s, %s parameters, %d characters, on %s (%s), version %s", path.name,
                loaded.model.architecture, f"{loaded.model.num_parameters():,}", len(loaded.vocab), device,
                "dtype auto" if choose_dtype else str(dtype).removeprefix("torch."), loaded.fingerprint)
    return entry
