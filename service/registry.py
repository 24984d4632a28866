"""Model directories -> loaded models, each with its engine; failures kept, reported, not fatal."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import torch

from charlm.checkpoint import LoadedModel, ModelDirError, load_model
from service.engine import Engine, EngineClosed
from service.engine_client import EngineClient
from service.engine_process import EngineSpec
from service.metrics import ServiceMetrics
from service.settings import Settings

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NoModelsError(Exception):
    """Not one model directory could be loaded."""


class UnknownModelError(LookupError):
    def __init__(self, name: str, available: list[str]):
        super().__init__(f"model {name!r} is not served; available: {', '.join(available) or 'none'}")


@dataclasses.dataclass
class ModelEntry:
    name: str
    path: Path
    loaded: LoadedModel | None = None  # with engine processes, a CPU copy that describes the model
    engine: Engine | EngineClient | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "ready" if self.engine is not None and self.engine.failure is None else "failed"

    @property
    def reason(self) -> str | None:
        """Why a failed model is not served: it did not load or start, or its engine process died."""
        return self.engine.failure if self.engine is not None and self.engine.failure else self.error


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise NoModelsError("CHARLM_DEVICE is cuda but CUDA is not available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def cpu_threads(engines: int) -> int:
    """Intra-op threads on a CPU: the cores minus one (for the HTTP side) shared by the engines.

    Each engine thread gets its own OpenMP team; more threads than cores in all makes
    OpenMP stop spinning, and every small operator then waits on a wake-up.
    """
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, engines))


def resolve_batch_size(setting: int, device: torch.device) -> int:
    """0 means the device's default: a GPU step costs about the same for 1 row as for 256."""
    return setting or (256 if device.type == "cuda" else 32)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[setting]


class Registry:
    """The models this process serves, by name."""

    def __init__(
        self, entries: list[ModelEntry], default_model: str, device: torch.device, dtype: torch.dtype,
        max_batch_size: int,
    ):
        self.entries = {entry.name: entry for entry in entries}
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        ready = [e.name for e in entries if e.status == "ready"]
        if not ready:
            problems = "; ".join(f"{e.name}: {e.reason}" for e in entries) or "no model directories"
            raise NoModelsError(f"no model could be loaded ({problems})")
        if default_model not in ready:
            logger.warning("default model %r is not available; using %r", default_model, ready[0])
            default_model = ready[0]
        self.default_model = default_model

    @classmethod
    def load(cls, settings: Settings, metrics: ServiceMetrics) -> Registry:
        """Load every model directory under settings.models_dir, warm each up, start its engine."""
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        directory = settings.models_dir
        if not directory.is_dir():
            raise NoModelsError(f"models directory {directory} does not exist")
        paths = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        if device.type == "cpu":
            torch.set_num_threads(1)  # loading needs no more; the engine threads compute
        batch_size = resolve_batch_size(settings.max_batch_size, device)
        threads = settings.torch_threads or cpu_threads(len(paths))
        entries = [load_entry(path, settings, metrics, device, dtype, batch_size, threads) for path in paths]
        if device.type == "cpu" and not settings.engine_process:
            torch.set_num_threads(threads)
        return cls(entries, settings.default_model, device, dtype, batch_size)

    @property
    def ready(self) -> list[ModelEntry]:
        return [entry for entry in self.entries.values() if entry.status == "ready"]

    def get(self, name: str | None) -> ModelEntry:
        """The ready model called `name` (the default when None); raises UnknownModelError."""
        entry = self.entries.get(name or self.default_model)
        if entry is None or entry.status != "ready":
            raise UnknownModelError(name or self.default_model, [e.name for e in self.ready])
        return entry

    def start(self) -> None:
        """Start every engine (each warms up first); one that fails is reported like a load failure."""
        for entry in self.ready:
            assert entry.engine is not None
            try:
                entry.engine.start()
            except EngineClosed as exc:
                logger.error("model %s failed to start: %s", entry.name, exc)
                entry.engine.join()
                entry.engine, entry.error = None, str(exc)
        if not self.ready:
            raise NoModelsError("no model could be started: " + "; ".join(
                f"{e.name}: {e.reason}" for e in self.entries.values()))
        if self.default_model not in {e.name for e in self.ready}:
            self.default_model = self.ready[0].name

    @property
    def engines(self) -> list[Engine | EngineClient]:
        return [entry.engine for entry in self.entries.values() if entry.engine is not None]

    def cancel_all(self) -> None:
        for engine in self.engines:
            engine.cancel_all()

    def close(self, grace_s: float) -> None:
        """Stop taking requests; let active sequences finish within one shared grace period,
        then cancel what still runs (each request still gets its final event)."""
        for engine in self.engines:
            engine.close()
        deadline = time.monotonic() + grace_s
        for engine in self.engines:
            if not engine.join(max(0.0, deadline - time.monotonic())):
                engine.cancel_all()
        for engine in self.engines:
            engine.join()


def load_entry(
    path: Path, settings: Settings, metrics: ServiceMetrics, device: torch.device, dtype: torch.dtype,
    max_batch_size: int, threads: int,
) -> ModelEntry:
    """Check and load a model directory and make its engine: in a process of its own (which loads the
    weights again, on the device; the copy here, on the CPU, only describes the model) or in a
    thread of this one."""
    entry = ModelEntry(path.name, path)
    try:
        entry.loaded = load_model(path, device="cpu" if settings.engine_process else device, dtype=dtype)
    except ModelDirError as exc:
        entry.error = str(exc)
        logger.error("model %s failed to load: %s", path.name, exc)
        return entry
    loaded = entry.loaded
    if settings.engine_process:
        spec = EngineSpec(path.name, path, str(device), dtype, max_batch_size, settings.max_queued,
                          settings.cuda_graphs, threads, settings.log_level)
        entry.engine = EngineClient(spec, metrics)
    else:
        entry.engine = Engine(path.name, loaded.model, loaded.vocab, max_batch_size, settings.max_queued,
                              metrics.for_model(path.name), cuda_graphs=settings.cuda_graphs)
    logger.info("model %s: %s, %s parameters, %d characters, on %s (%s)", path.name,
                loaded.model.architecture, f"{loaded.model.num_parameters():,}", len(loaded.vocab), device,
                str(dtype).removeprefix("torch."))
    return entry
