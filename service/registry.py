"""Model directories -> loaded models, each with its engine; failures kept, reported, not fatal."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from charlm.checkpoint import LoadedModel, ModelDirError, load_model
from service.engine import Engine
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
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "ready" if self.engine is not None else "failed"


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise NoModelsError("CHARLM_DEVICE is cuda but CUDA is not available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[setting]


class Registry:
    """The models this process serves, by name."""

    def __init__(
        self, entries: list[ModelEntry], default_model: str, device: torch.device, dtype: torch.dtype
    ):
        self.entries = {entry.name: entry for entry in entries}
        self.device = device
        self.dtype = dtype
        ready = [e.name for e in entries if e.status == "ready"]
        if not ready:
            problems = "; ".join(f"{e.name}: {e.error}" for e in entries) or "no model directories"
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
        entries = [load_entry(path, settings, metrics, device, dtype) for path in paths]
        return cls(entries, settings.default_model, device, dtype)

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
        for entry in self.ready:
            assert entry.engine is not None
            entry.engine.start()

    def close(self, grace_s: float | None = None) -> None:
        for entry in self.ready:
            assert entry.engine is not None
            entry.engine.close(grace_s)


def load_entry(
    path: Path, settings: Settings, metrics: ServiceMetrics, device: torch.device, dtype: torch.dtype
) -> ModelEntry:
    entry = ModelEntry(path.name, path)
    try:
        entry.loaded = load_model(path, device=device, dtype=dtype)
    except ModelDirError as exc:
        entry.error = str(exc)
        logger.error("model %s failed to load: %s", path.name, exc)
        return entry
    loaded = entry.loaded
    engine = Engine(path.name, loaded.model, loaded.vocab, settings.max_batch_size, settings.max_queued,
                    metrics.for_model(path.name))
    engine.warm_up()
    entry.engine = engine
    logger.info("model %s: %s, %s parameters, %d characters, on %s (%s)", path.name,
                loaded.model.architecture, f"{loaded.model.num_parameters():,}", len(loaded.vocab), device,
                str(dtype).removeprefix("torch."))
    return entry
