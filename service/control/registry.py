"""The models the server serves, by name: each with its engine; failures kept, reported, not fatal.
Models come and go while it serves (`service.control.live_models`): a replaced version's engine retires,
finishing what it runs, while the new one takes the new requests. One registry per server, whatever
the number of its HTTP front ends."""

from __future__ import annotations

import collections
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from charlm.cpus import available_cpus
from service.control.engines import EngineHandle
from service.control.model_entry import EngineConfig, ModelEntry, make_entry, standby_entry
from service.engine.sequences import EngineMetrics
from service.settings import Settings

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SERVES = ("ready", "loading", "standby")  # a default in these answers its requests, if after a wait


class NoModelsError(Exception):
    """Not one model directory could be loaded."""


class UnknownModelError(LookupError):
    def __init__(self, name: str, available: list[str]):
        super().__init__(f"model {name!r} is not served; available: {', '.join(available) or 'none'}")


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise NoModelsError("CHARLM_DEVICE is cuda but CUDA is not available")
    if setting == "auto" and not torch.cuda.is_available():
        logger.warning("no GPU is visible (torch %s, CUDA %s): serving on the CPU",
                       torch.__version__, torch.version.cuda)
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def cpu_threads(engines: int) -> int:
    """Intra-op threads on a CPU: the CPUs this process may use (`charlm.cpus`) minus one (for the
    HTTP side), shared by the engines.

    Each engine thread gets its own OpenMP team; more threads than cores in all makes
    OpenMP stop spinning, and every small operator then waits on a wake-up.
    """
    return max(1, (available_cpus() - 1) // max(1, engines))


def resolve_batch_size(setting: int, device: torch.device) -> int:
    """0 means the device's default: a GPU step costs about the same for 1 row as for 256."""
    return setting or (256 if device.type == "cuda" else 32)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[setting]


class Registry:
    """The models this process serves, by name."""

    def __init__(self, entries: list[ModelEntry], default_model: str, config: EngineConfig):
        self.entries = {entry.name: entry for entry in entries}
        self.config = config
        self.device, self.dtype, self.max_batch_size = config.device, config.dtype, config.max_batch_size
        self.configured_default = default_model
        self.retiring: list[EngineHandle] = []  # replaced or removed versions, finishing their work
        # Model versions loaded after startup, and directories that failed to load or start (metrics).
        self.reloads: collections.Counter[str] = collections.Counter()
        self.load_failures: collections.Counter[str] = collections.Counter(
            e.name for e in entries if e.status == "failed")

    @classmethod
    def load(cls, settings: Settings, engine_metrics: Callable[[str], EngineMetrics] = lambda name: EngineMetrics()
             ) -> Registry:
        """Make an engine for every model directory under settings.models_dir (engine processes start
        loading at once); `start` waits for them."""
        device = resolve_device(settings.device)
        directory = settings.models_dir
        if not directory.is_dir():
            raise NoModelsError(f"models directory {directory} does not exist")
        paths = model_directories(directory)
        if device.type == "cpu":
            torch.set_num_threads(1)  # loading needs no more; the engine threads compute
        threads = settings.torch_threads or cpu_threads(min(len(paths), settings.max_loaded or len(paths)))
        runtime_dir = Path(tempfile.mkdtemp(prefix="charlm-"))
        config = EngineConfig(settings, device, resolve_dtype(settings.dtype, device),
                              resolve_batch_size(settings.max_batch_size, device), threads, runtime_dir, engine_metrics)
        default = resolve_default(settings.default_model, paths)
        loaded = loaded_at_start(paths, default, settings.max_loaded)
        entries = [make_entry(path, config) if path.name in loaded else standby_entry(path) for path in paths]
        if device.type == "cpu" and not settings.engine_process:
            torch.set_num_threads(threads)
        return cls(entries, default, config)

    @property
    def default_model(self) -> str:
        """The configured default, whatever its state: a request that names no model is never given
        another model's text unasked. Only a fallback the operator set (CHARLM_FALLBACK_MODEL) stands
        in, and only while the default cannot answer soon (failed, unloaded, restarting, removed) and
        the fallback is ready."""
        fallback = self.config.settings.fallback_model
        if fallback and self.status_of(self.configured_default) not in SERVES and self.status_of(fallback) == "ready":
            return fallback
        return self.configured_default

    def engines_held(self) -> int:
        """Models with an engine running or about to (loading, restarting): what CHARLM_MAX_LOADED caps."""
        return sum(1 for e in self.entries.values() if e.engine is not None or e.status in ("loading", "restarting"))

    def status_of(self, name: str) -> str | None:
        entry = self.entries.get(name)
        return entry.status if entry is not None else None

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
        """Start every engine (each loads and warms up first); one that fails is reported like a load
        failure. Raises NoModelsError when none started."""
        for entry in self.entries.values():
            if entry.engine is not None and not entry.start():
                self.load_failures[entry.name] += 1
        ready = [e.name for e in self.ready]
        if not ready and not any(e.status == "standby" for e in self.entries.values()):
            problems = "; ".join(f"{e.name}: {e.reason}" for e in self.entries.values()) or "no model directories"
            self.close(0)
            raise NoModelsError(f"no model could be loaded ({problems})")
        if self.configured_default not in ready:
            logger.error("the default model %r is not ready (%s): requests that name no model get 503",
                         self.configured_default, self.entries[self.configured_default].reason
                         if self.configured_default in self.entries else "no such model directory")

    def install(self, entry: ModelEntry) -> ModelEntry | None:
        """Serve `entry` under its name from now on; returns the entry it displaces, if any."""
        old, self.entries[entry.name] = self.entries.get(entry.name), entry
        return old

    def retire(self, entry: ModelEntry) -> EngineHandle | None:
        """Give `entry`'s engine no more requests; what it runs or has queued still finishes. Returns
        the engine, to be joined (then it is `forget`-ten)."""
        engine, entry.engine = entry.engine, None
        if engine is not None:
            engine.close(finish_queued=True)
            self.retiring.append(engine)
        return engine

    def forget(self, engine: EngineHandle) -> None:
        if engine in self.retiring:
            self.retiring.remove(engine)

    @property
    def engines(self) -> list[EngineHandle]:
        """Every engine that runs: the served versions' and the retiring ones'."""
        return [e.engine for e in self.entries.values() if e.engine is not None] + list(self.retiring)

    def cancel_all(self) -> None:
        for engine in self.engines:
            engine.cancel_all()

    def close(self, grace_s: float) -> None:
        """Stop taking requests; let active sequences finish within one shared grace period,
        then cancel what still runs (each request still gets its final event)."""
        engines = self.engines
        for engine in engines:
            engine.close()
        deadline = time.monotonic() + grace_s
        for engine in engines:
            if not engine.join(max(0.0, deadline - time.monotonic())):
                engine.cancel_all()
        for engine in engines:
            engine.join()
        shutil.rmtree(self.config.runtime_dir, ignore_errors=True)


def resolve_default(configured: str, paths: list[Path]) -> str:
    """The default model, decided once at startup: the configured one, or, when no directory has its
    name, the first by name (said in the log). Never changed afterwards."""
    names = [path.name for path in paths]
    if configured in names or not names:
        return configured
    logger.warning("default model %r is not available; using %r", configured, names[0])
    return names[0]


def loaded_at_start(paths: list[Path], default: str, max_loaded: int) -> set[str]:
    """The models whose engines start with the server: all, or under CHARLM_MAX_LOADED the default and
    then the first by name; the others wait on standby for their first request."""
    names = sorted((path.name for path in paths), key=lambda name: (name != default, name))
    return set(names[:max_loaded] if max_loaded else names)


def model_directories(directory: Path) -> list[Path]:
    """The model directories under `directory`: its visible subdirectories (training stages a
    checkpoint in a hidden one), sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
