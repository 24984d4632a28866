"""What a front end knows of the served models: a view of each model directory, and a client for
each engine that serves one.

The control plane (`service.control`) decides which versions are served; a front end follows it.
`LocalModels` runs the control plane in this process (one front end: `--workers 1`, and the app in
tests); `service.frontend.remote.RemoteModels` follows a supervisor's control plane over a socket
(several front ends). Either way, after a change the front end connects to new engines before the
control plane retires old ones, and an old version's client stays until its sequences are done.
"""

from __future__ import annotations

import asyncio
import logging

from service.control.keeper import EngineKeeper, NoRoomError
from service.control.live_models import ModelWatcher, ReloadReport
from service.control.registry import Registry, UnknownModelError
from service.control.views import ModelView, ServerFacts, views_of
from service.frontend.engine_client import EngineClient, EngineConnection, ThreadEngineClient
from service.frontend.metrics import ServiceMetrics

logger = logging.getLogger(__name__)
WAITED_FOR = ("loading", "restarting", "standby")  # a request for a model in these waits, within a bound
ANSWER_MARGIN_S = 0.5  # for the control plane's answer that no engine made room in time


class ModelUnavailableError(Exception):
    """The model exists but cannot serve now (503): failed, restarting, on standby, unloaded."""

    def __init__(self, name: str, status: str, reason: str | None):
        self.status = status
        said = {"failed": "failed", "unloaded": "was unloaded by an administrator (POST /admin/reload serves it again)",
                "removed": "is not served: its directory was removed"}
        super().__init__(f"model {name!r} {said.get(status, f'is {status}')}" + (f": {reason}" if reason else ""))


class FrontModels:
    """The models as this front end serves them."""

    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics
        self.views: dict[str, ModelView] = {}
        self.clients: dict[str, EngineConnection] = {}  # by ModelView.engine
        self.retiring: list[EngineConnection] = []  # clients of versions no longer served, until done
        self.default_model = ""
        self.facts = ServerFacts("", "", 0, 0)
        self.reloads: dict[str, int] = {}  # per model: versions loaded after startup
        self.load_failures: dict[str, int] = {}
        self.changed = asyncio.Event()  # set when the views change (then replaced)
        self.closing = False  # draining: no request waits for a model any more

    @property
    def ready(self) -> list[ModelView]:
        return [v for v in self.views.values() if self.status(v) == "ready"]

    def status(self, view: ModelView) -> str:
        """The view's status; restarting when this front end saw its engine die before the control
        plane said so (it restarts the engine), failed when this front end cannot reach the engine."""
        client = self.clients.get(view.engine)
        if client is None:
            return "failed" if view.status == "ready" else view.status
        return "restarting" if client.failure else view.status

    def reason(self, view: ModelView) -> str | None:
        client = self.clients.get(view.engine)
        if client is None and view.status == "ready":
            return f"this front end cannot reach the engine of model {view.name}"
        return client.failure if client is not None and client.failure else view.error

    def get(self, name: str | None) -> tuple[ModelView, EngineConnection]:
        """The ready model called `name` (the default when None) and its engine's client."""
        view = self.views.get(name or self.default_model)
        if view is None or self.status(view) != "ready":
            raise UnknownModelError(name or self.default_model, [v.name for v in self.ready])
        return view, self.clients[view.engine]

    async def acquire(self, name: str | None, wait_s: float) -> tuple[ModelView, EngineConnection]:
        """The model called `name` (the default when None) once it is ready, and its engine's client:
        one on standby is loaded, one loading or restarting is waited for, for at most `wait_s`.
        Raises UnknownModelError (no such model) or ModelUnavailableError (not ready, and why)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        loading: asyncio.Future[str] | None = None
        while True:
            wanted = name or self.default_model
            view = self.views.get(wanted)
            if view is None and name is None:  # the default's directory is gone: never another model
                raise ModelUnavailableError(wanted, "removed", None)
            if view is None:
                raise UnknownModelError(wanted, sorted(self.views))
            status = self.status(view)
            if status == "ready":
                return view, self.clients[view.engine]
            remaining = deadline - asyncio.get_running_loop().time()
            if status not in WAITED_FOR or self.closing:
                raise ModelUnavailableError(wanted, status, self.reason(view))
            if remaining <= 0:
                raise ModelUnavailableError(wanted, status, f"it was not ready within {wait_s:g} s")
            changed = self.changed
            try:
                if status == "standby" and (loading is None or loading.done()):
                    # Room is waited for a little less than the request may wait, so that "no room" is
                    # the answer rather than a timeout; the load goes on if the request ends first.
                    loading = asyncio.ensure_future(self.load(wanted, max(0.0, remaining - ANSWER_MARGIN_S)))
                    loading.add_done_callback(lambda task: task.cancelled() or task.exception())
                    await asyncio.wait_for(asyncio.shield(loading), remaining)
                elif not changed.is_set():
                    await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                raise ModelUnavailableError(wanted, status, f"it was not ready within {wait_s:g} s") from None

    def stop_waiting(self) -> None:
        """The front end drains: requests waiting for a model's engine get their 503 now."""
        self.closing = True
        self.changed.set()

    async def load(self, name: str, room_wait_s: float) -> str:
        """Ask the control plane to start a model on standby (waiting at most `room_wait_s` for an
        engine to make room for it); its status once known."""
        raise NotImplementedError

    def in_flight(self) -> int:
        """This front end's sequences that have not ended, on every engine. Read by the drain's
        thread too, so it changes nothing (copying the clients out is one step for the interpreter)."""
        return sum(c.in_flight for c in [*self.clients.values(), *self.retiring])

    def still_retiring(self) -> list[EngineConnection]:
        """The clients of versions no longer served that still run sequences; the rest are let go."""
        self.retiring = [c for c in self.retiring if c.in_flight]
        return self.retiring

    async def follow(self, views: dict[str, ModelView], default_model: str) -> None:
        """Serve by `views` from now on: connect to new engines first, then let go of old ones."""
        wanted = {v.engine: v for v in views.values() if v.engine}
        self.still_retiring()
        fresh: dict[str, EngineConnection] = {}
        for key, view in wanted.items():
            if key not in self.clients:
                try:
                    fresh[key] = await self._connect(view)
                except OSError as exc:  # failed here (`status`) until a later change reaches it
                    logger.error("model %s: cannot reach its engine: %s", view.name, exc)
        for key, client in list(self.clients.items()):
            if key not in wanted:
                del self.clients[key]
                client.closed = True  # takes no new requests; what it runs finishes
                self.retiring.append(client)
        self.clients.update(fresh)
        self.views, self.default_model = views, default_model
        self.changed.set()  # wakes the requests waiting for a model; the next change sets a new event
        self.changed = asyncio.Event()
        self.metrics.models_loaded.set(len(self.ready))

    async def _connect(self, view: ModelView) -> EngineConnection:
        client = EngineClient(view.name, view.engine, self.metrics)
        await client.connect()
        return client

    async def reload(self, explicit: bool = True) -> ReloadReport:
        raise NotImplementedError

    async def unload(self, name: str) -> bool:
        raise NotImplementedError

    async def stop(self) -> None:
        """No more changes: the front end is shutting down."""

    def cancel_all(self) -> None:
        """Cancel this front end's sequences on every engine (each still gets its final event)."""
        for client in [*self.clients.values(), *self.retiring]:
            client.cancel_all()

    def close(self) -> None:
        for client in [*self.clients.values(), *self.retiring]:
            client.close()


class LocalModels(FrontModels):
    """The control plane in this process: the registry, its engines and the models directory's
    watcher; the front end follows each change before an old version retires."""

    def __init__(self, registry: Registry, metrics: ServiceMetrics):
        super().__init__(metrics)
        self.registry = registry
        self.watcher = ModelWatcher(registry, registry.config.settings.models_dir, self.refresh)
        self.keeper = EngineKeeper(registry, self.watcher)
        self.facts = ServerFacts.of(registry)
        self.reloads, self.load_failures = registry.reloads, registry.load_failures

    async def refresh(self) -> None:
        await self.follow(views_of(self.registry), self.registry.default_model)

    async def _connect(self, view: ModelView) -> EngineConnection:
        entry = self.registry.entries[view.name]
        engine = entry.engine
        if engine is not None and engine.engine is not None:  # in a thread of this process
            return ThreadEngineClient(engine.engine, self.metrics, asyncio.get_running_loop())
        return await super()._connect(view)

    def status(self, view: ModelView) -> str:
        entry = self.registry.entries.get(view.name)
        if entry is not None and entry.engine is not None and entry.engine.failure:
            return "restarting"  # the keeper's next look (within a quarter of a second) starts another
        return super().status(view)

    def reason(self, view: ModelView) -> str | None:
        entry = self.registry.entries.get(view.name)
        if entry is not None and entry.engine is not None and entry.engine.failure:
            return entry.engine.failure
        return super().reason(view)

    async def reload(self, explicit: bool = True) -> ReloadReport:
        return await self.watcher.reload(explicit=explicit)

    async def unload(self, name: str) -> bool:
        return await self.watcher.unload(name)

    async def load(self, name: str, room_wait_s: float) -> str:
        try:
            return await self.keeper.load(name, room_wait_s)
        except NoRoomError as exc:
            raise ModelUnavailableError(name, "standby", str(exc)) from None

    async def stop(self) -> None:
        await self.keeper.stop()
        await self.watcher.stop()
