"""The served models follow the models directory while the server runs.

A look at the directory (every `models_poll_s` seconds, or `POST /admin/reload`) compares each model
directory's files with what was read last time. A new directory is loaded and served; a changed one
whose weights' fingerprint differs is loaded beside the old version, which then retires: its engine
finishes what it runs and has queued while new requests go to the new version. A removed directory's
model retires the same way. A directory that fails to load (a copy still under way, a broken file)
is reported and tried again when it changes; a served version stays served meanwhile.

Loading runs in worker threads (and the engine in a process of its own, by default), so the event
loop and the other models' streams go on. The registry itself is changed only on the event loop;
after each change, and before an old version is told to retire, `changed` is awaited: it returns
once every front end routes new requests by the changed registry. So a request is always queued on
a version that is still taking requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from charlm.checkpoint import WEIGHTS_FILE, weights_fingerprint
from service.control.engines import EngineHandle
from service.control.model_entry import ModelEntry, Signature, directory_signature, standby_entry, start_entry
from service.control.registry import Registry, model_directories

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ReloadReport:
    """What one look at the models directory changed."""

    loaded: list[str] = dataclasses.field(default_factory=list)  # new models, now served
    replaced: list[str] = dataclasses.field(default_factory=list)  # new versions, now served
    removed: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # name: why it is not served


async def nobody_to_tell() -> None:
    return None


class ModelWatcher:
    def __init__(self, registry: Registry, models_dir: Path,
                 changed: Callable[[], Awaitable[None]] = nobody_to_tell):
        self.registry = registry
        self.models_dir = models_dir
        self.changed = changed  # returns once every front end follows the registry
        self.lock = asyncio.Lock()  # one look at a time (held while it loads)
        # Every change of the registry, by a look or by the engine keeper, with the front ends told:
        # held briefly, never while an engine starts, so that a reload's loading delays no restart.
        self.changing = asyncio.Lock()
        self.stopped = False
        self._joins: set[asyncio.Task[None]] = set()

    async def poll(self, interval_s: float) -> None:
        """Look at the directory every `interval_s` seconds, until cancelled. A look under way when
        the task is cancelled runs to its end (shielded): `stop` waits for it."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.shield(self.reload())
            except asyncio.CancelledError:
                raise
            except Exception:  # a look that fails (the directory is gone) must not end the polling
                logger.exception("looking at %s for model changes failed", self.models_dir)

    async def stop(self) -> None:
        """Wait for a look under way; none starts after this, so the registry holds every engine."""
        async with self.lock:
            self.stopped = True

    async def reload(self, explicit: bool = False) -> ReloadReport:
        """Bring the served models in line with the directory. An `explicit` look (an administrator's)
        also loads again the models unloaded by hand and tries the failed ones again (a poll leaves
        them be until their directory changes)."""
        async with self.lock:
            report = ReloadReport()
            if self.stopped:
                return report
            seen = await asyncio.to_thread(self._scan)
            async with self.changing:
                gone = [name for name in self.registry.entries if name not in seen]
                removed = [self.registry.entries.pop(name) for name in gone]
                if removed:
                    await self.changed()
                for entry in removed:
                    self.retire(entry, "its directory was removed")
                    report.removed.append(entry.name)
                changed = [(path, signature) for path, signature in seen.values()
                           if self._wants_load(path.name, signature, explicit)]
            await asyncio.gather(*(self._load(path, signature, report) for path, signature in changed))
            if changed:
                await self.changed()  # a served version's reload error, set or cleared
            return report

    async def unload(self, name: str) -> bool:
        """Stop serving a ready model; it finishes what it runs, and stays unloaded until its
        directory changes or an explicit reload. False when it is not (or no longer) ready."""
        async with self.lock, self.changing:  # never in the middle of a look, which might serve it again
            entry = self.registry.entries.get(name)
            if entry is None or entry.status != "ready":
                return False
            unloaded = ModelEntry(name, entry.path, signature=entry.signature, phase="unloaded")
            self.registry.install(unloaded)
            await self.changed()
            self.retire(entry, "unloaded")
            return True

    def _scan(self) -> dict[str, tuple[Path, Signature]]:
        return {path.name: (path, directory_signature(path)) for path in model_directories(self.models_dir)}

    def _wants_load(self, name: str, signature: Signature, explicit: bool) -> bool:
        entry = self.registry.entries.get(name)
        if entry is None:
            return True
        if entry.status in ("loading", "restarting"):  # the keeper starts it from the directory as it is then
            return False
        if entry.status == "standby":  # loaded on demand, from the directory as it is then
            entry.signature = signature
            return False
        if entry.status in ("unloaded", "failed") and explicit:
            return True
        return signature != entry.signature

    async def _load(self, path: Path, signature: Signature, report: ReloadReport) -> None:
        name = path.name
        async with self.changing:
            current = self.registry.entries.get(name)
            serving = current is not None and current.status == "ready"
            if serving and current is not None and await asyncio.to_thread(same_weights, path, current):
                current.signature, current.reload_error = signature, None
                return  # the weights are the served ones (a training summary was rewritten): nothing to do
            if not serving and self._full():  # under CHARLM_MAX_LOADED: loaded on demand
                self.registry.install(standby_entry(path))
                report.loaded.append(name)
                await self.changed()
                return
            if not serving:  # shown as loading meanwhile; a served version is served until replaced
                current = ModelEntry(name, path, signature=signature, phase="loading")
                self.registry.install(current)
                await self.changed()
        fresh = await asyncio.to_thread(self._load_and_start, path)
        async with self.changing:
            await self._install(fresh, current, serving, report)

    async def _install(self, fresh: ModelEntry, expected: ModelEntry | None, serving: bool,
                       report: ReloadReport) -> None:
        """Serve what was just loaded. A failure keeps a served version (with the reason) or shows the
        model failed, unless the keeper changed the entry meanwhile (a restart: it is its to finish)."""
        name, now = fresh.name, self.registry.entries.get(fresh.name)
        if fresh.status != "ready":
            report.failed[name] = str(fresh.reason)
            self.registry.load_failures[name] += 1
            if serving and now is expected and now is not None:  # keep serving what works; try again later
                now.signature, now.reload_error = fresh.signature, fresh.reason
            elif now is expected:
                self.registry.install(fresh)
            await self.changed()
            return
        self.registry.reloads[name] += 1
        displaced = self.registry.install(fresh)  # the newest contents win over a restart under way
        await self.changed()
        if displaced is not None:
            self.retire(displaced, f"replaced by version {fresh.version}")
        (report.replaced if serving else report.loaded).append(name)
        logger.info("model %s version %s is served", name, fresh.version)

    def _full(self) -> bool:
        cap = self.registry.config.settings.max_loaded
        return bool(cap) and self.registry.engines_held() >= cap

    def _load_and_start(self, path: Path) -> ModelEntry:
        return start_entry(path, self.registry.config)

    def retire(self, entry: ModelEntry, why: str) -> None:
        engine = self.registry.retire(entry)
        if engine is None:
            return
        logger.info("model %s version %s retires (%s): it finishes what it runs", entry.name, entry.version, why)
        task = asyncio.get_running_loop().create_task(self._join(entry.name, entry.version, engine))
        self._joins.add(task)
        task.add_done_callback(self._joins.discard)

    async def _join(self, name: str, version: str | None, engine: EngineHandle) -> None:
        await asyncio.to_thread(engine.join)
        self.registry.forget(engine)
        logger.info("model %s version %s unloaded", name, version)


def same_weights(path: Path, entry: ModelEntry) -> bool:
    """Whether the weights file in `path` is the version `entry` serves."""
    try:
        return weights_fingerprint((path / WEIGHTS_FILE).read_bytes()) == entry.version
    except OSError:
        return False
