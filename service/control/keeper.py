"""Keeps the served models' engines running, and only those that should run.

Every `LOOK_S` the keeper looks at each model's engine:
- one that died or hung (`EngineProcess` kills a hung one) is replaced: the model is `restarting`
  while another engine starts, after a backoff that doubles with each death (0, 1, 2, 4 … 30 s).
  More than `engine_restarts` deaths in `CRASH_WINDOW_S` is a crash loop: the model is `failed`, with
  the last death's reason, until its directory changes or an administrator reloads it;
- under CHARLM_KEEP_ALIVE, one idle that long is unloaded to `standby` (the default model never is).
A request for a model on standby asks the keeper to `load` it; under CHARLM_MAX_LOADED the least
recently used idle engine makes room first (one with sequences never does; the default model takes
its turn there too, and loads again at its next request).

The registry is changed only on the event loop and under the models watcher's `changing` lock,
never held while an engine starts, and each change is followed by every front end (`changed`)
before an old engine retires, as in `service.control.live_models`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

from service.control.engines import EngineHandle
from service.control.live_models import ModelWatcher
from service.control.model_entry import ModelEntry, start_entry
from service.control.registry import Registry
from service.control.room import NoRoomError, idle_engines, make_room

logger = logging.getLogger(__name__)
LOOK_S = 0.25
CRASH_WINDOW_S = 300.0
MAX_BACKOFF_S = 30.0
ROOM_POLL_S = 0.1  # how often a load waiting for room under CHARLM_MAX_LOADED looks again

__all__ = ["EngineKeeper", "NoRoomError"]


class EngineKeeper:
    def __init__(self, registry: Registry, watcher: ModelWatcher):
        self.registry = registry
        self.watcher = watcher
        self.settings = registry.config.settings
        self.deaths: dict[str, list[float]] = collections.defaultdict(list)  # monotonic times, per model
        self.tasks: set[asyncio.Task[None]] = set()  # restarts waiting or under way
        self.reaping: set[asyncio.Future[bool]] = set()  # dead engines' processes, joined in threads
        self.looking: asyncio.Future[None] | None = None
        self.stopped = False

    async def run(self) -> None:
        """Look every LOOK_S until cancelled (a look under way finishes: `stop` waits for it)."""
        while True:
            await asyncio.sleep(LOOK_S)
            self.looking = asyncio.ensure_future(self.look())
            try:
                await asyncio.shield(self.looking)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad look must not end the keeping
                logger.exception("looking after the engines failed")

    async def look(self) -> None:
        async with self.watcher.changing:
            if self.stopped:
                return
            for entry in [e for e in self.registry.entries.values() if e.engine is not None and e.engine.failure]:
                await self._died(entry, str(entry.engine.failure if entry.engine else ""))
            if self.settings.keep_alive is not None:
                for entry in idle_engines(self.registry, self.settings.keep_alive, keep_default=True):
                    logger.info("model %s has been idle for %.0f s: unloaded until a request wants it",
                                entry.name, self.settings.keep_alive)
                    await self._to_standby(entry)

    async def load(self, name: str, room_wait_s: float) -> str:
        """Start the engine of a model on standby (making room first under CHARLM_MAX_LOADED);
        returns the model's status once it is known: ready, failed, or where another load stands.
        Raises NoRoomError when every loaded engine stayed busy for `room_wait_s`."""
        deadline = time.monotonic() + room_wait_s
        while True:
            async with self.watcher.changing:
                entry = self.registry.entries.get(name)
                if entry is None or entry.status != "standby" or self.stopped:
                    return entry.status if entry is not None else "absent"
                try:
                    evicted = make_room(self.registry)
                except NoRoomError:
                    if time.monotonic() > deadline:
                        raise
                else:
                    if evicted is not None:
                        logger.info("model %s is unloaded to make room (CHARLM_MAX_LOADED=%d)", evicted.name,
                                    self.settings.max_loaded)
                    gone = await self._to_standby(evicted) if evicted is not None else None
                    placeholder = ModelEntry(name, entry.path, signature=entry.signature, phase="loading")
                    self.registry.install(placeholder)
                    await self.watcher.changed()
                    break
            await asyncio.sleep(ROOM_POLL_S)  # until an engine's sequences end
        if gone is not None:  # its memory (a GPU's above all) is free before the next engine takes some
            await asyncio.to_thread(gone.join, max(0.0, deadline - time.monotonic()))
        logger.info("model %s: loading on demand", name)
        fresh = await self._start(placeholder.path)
        async with self.watcher.changing:
            if not await self._install_over(placeholder, fresh):
                return self.registry.status_of(name) or "absent"
            if fresh.status != "ready":
                self.registry.load_failures[name] += 1
            return fresh.status

    async def stop(self) -> None:
        """No more restarts or loads: the look under way ends, the restarts waiting for their backoff are
        cancelled (an engine starting is let finish, then closed)."""
        self.stopped = True
        if self.looking is not None:
            await asyncio.gather(self.looking, return_exceptions=True)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _died(self, entry: ModelEntry, why: str) -> None:
        now = time.monotonic()
        deaths = self.deaths[entry.name] = [t for t in self.deaths[entry.name] if now - t < CRASH_WINDOW_S] + [now]
        self._let_go(entry)
        if len(deaths) > self.settings.engine_restarts:
            failed = ModelEntry(entry.name, entry.path, signature=entry.signature, error=(
                f"crash loop: its engine failed {len(deaths)} times in {CRASH_WINDOW_S / 60:.0f} minutes; "
                f"the last time: {why}"))
            logger.error("model %s: %s", entry.name, failed.error)
            del self.deaths[entry.name]  # loaded again (its directory changed, or a reload), it starts afresh
            self.registry.install(failed)
            await self.watcher.changed()
            return
        backoff = min(MAX_BACKOFF_S, 2.0 ** (len(deaths) - 2)) if len(deaths) > 1 else 0.0
        logger.warning("model %s: %s; starting another engine in %.0f s", entry.name, why, backoff)
        placeholder = ModelEntry(entry.name, entry.path, signature=entry.signature, phase="restarting", error=why)
        self.registry.install(placeholder)
        await self.watcher.changed()
        task = asyncio.get_running_loop().create_task(self._restart(placeholder, backoff))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _restart(self, placeholder: ModelEntry, backoff: float) -> None:
        await asyncio.sleep(backoff)
        fresh = await self._start(placeholder.path)
        async with self.watcher.changing:
            if not await self._install_over(placeholder, fresh):
                return
            if fresh.status == "ready":
                logger.info("model %s is served again by a new engine (version %s)", fresh.name, fresh.version)
            else:  # a start that fails counts as another death: backoff, or a crash loop
                self.registry.install(placeholder)
                await self._died(placeholder, str(fresh.reason))

    async def _start(self, path: Path) -> ModelEntry:
        """An engine started in a worker thread (failed, with the reason, whatever went wrong). Should
        the server stop meanwhile, the engine is closed once started."""
        starting = asyncio.ensure_future(asyncio.to_thread(start_entry, path, self.registry.config))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(close_started)
            raise

    async def _install_over(self, placeholder: ModelEntry, fresh: ModelEntry) -> bool:
        """Serve `fresh` in the placeholder's stead, unless the placeholder was displaced meanwhile (the
        directory removed or changed, the server stopping): then `fresh`'s engine is closed."""
        if self.registry.entries.get(placeholder.name) is not placeholder or self.watcher.stopped or self.stopped:
            self.registry.retire(fresh)
            return False
        self.registry.install(fresh)
        await self.watcher.changed()
        return True

    async def _to_standby(self, entry: ModelEntry) -> EngineHandle | None:
        """Unload `entry`'s engine (it finishes what it holds); the engine, to wait for its exit."""
        engine = entry.engine
        self.registry.install(ModelEntry(entry.name, entry.path, signature=entry.signature, phase="standby",
                                         known=entry.info, loaded_at=entry.loaded_at))
        await self.watcher.changed()
        self.watcher.retire(entry, "unloaded until a request wants it")
        return engine

    def _let_go(self, entry: ModelEntry) -> None:
        """A dead engine's process is reaped in the background (a hung one was killed already)."""
        engine, entry.engine = entry.engine, None
        if engine is not None:
            engine.kill()
            reaped = asyncio.ensure_future(asyncio.to_thread(engine.join, 5))
            self.reaping.add(reaped)
            reaped.add_done_callback(self.reaping.discard)


def close_started(starting: asyncio.Future[ModelEntry]) -> None:
    if not starting.cancelled() and starting.exception() is None and (engine := starting.result().engine) is not None:
        engine.close()
