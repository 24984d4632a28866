"""What the control plane tells front ends about the served models (picklable: with several front
ends it crosses processes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from service.control.model_entry import ModelEntry
from service.control.registry import Registry
from service.engine.specs import ModelInfo


@dataclasses.dataclass(frozen=True)
class ModelView:
    """One model directory as the control plane describes it (picklable: it crosses processes)."""

    name: str
    path: Path
    status: str  # ready, loading, unloaded or failed
    info: ModelInfo | None = None  # of the served version
    engine: str = ""  # names the engine serving it: its socket, or a thread's id
    error: str | None = None
    reload_error: str | None = None
    loaded_at: float = 0.0
    load_s: float = 0.0
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    pid: int | None = None  # of its engine process

    @property
    def version(self) -> str | None:
        return self.info.version if self.info is not None else None

    @classmethod
    def of(cls, entry: ModelEntry) -> ModelView:
        status, engine = entry.status, entry.engine
        key = "" if engine is None or status != "ready" else engine.address or f"thread-{id(engine)}"
        return cls(entry.name, entry.path, status, entry.info, key, entry.reason, entry.reload_error,
                   entry.loaded_at, entry.load_s, dict(engine.memory) if key and engine is not None else {},
                   engine.pid if engine is not None else None)


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """What the whole server decided at startup (for /info)."""

    device: str
    dtype: str
    dtype_bytes: int
    max_batch_size: int

    @classmethod
    def of(cls, registry: Registry) -> ServerFacts:
        return cls(str(registry.device), str(registry.dtype).removeprefix("torch."), registry.dtype.itemsize,
                   registry.max_batch_size)


def views_of(registry: Registry) -> dict[str, ModelView]:
    return {name: ModelView.of(entry) for name, entry in sorted(registry.entries.items())}
