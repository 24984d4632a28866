"""The FastAPI application: routers, error handlers, middleware; models load in the lifespan.

On its own (one front end) the app runs the control plane itself: it loads the models, starts
their engines and follows the models directory. As one of several front ends it follows a
supervisor's control plane instead (`control_address`: `service.frontend.remote`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import charlm
from service.control.registry import NoModelsError, Registry
from service.engine import collector
from service.frontend import errors
from service.frontend.metrics import ServiceMetrics
from service.frontend.middleware import MODEL_HEADER, REQUEST_ID_HEADER, VERSION_HEADER, RequestContextMiddleware
from service.frontend.models import FrontModels, LocalModels
from service.frontend.openapi import openapi_with_limits
from service.frontend.remote import RemoteModels
from service.frontend.routes import admin, chat, files, fine_tuning, openai, playground, system, tgi, tokenizer
from service.frontend.state import ServiceState
from service.frontend.streams import Pacer
from service.jobs.service import start_scheduler
from service.settings import Settings

logger = logging.getLogger(__name__)
MULTIPART_FRAMING_BYTES = 64 * 1024  # an upload's body: the file, its form's headers and boundaries


def create_app(settings: Settings | None = None, control_address: str | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()
    state = ServiceState(settings, metrics, Pacer(settings.stream_writes_per_s, settings.sse_keepalive_s))

    app = FastAPI(
        title="charlm",
        version=charlm.__version__,
        description="Character-level language models behind TGI- and OpenAI-compatible APIs.",
        lifespan=functools.partial(lifespan, state, control_address),
    )
    app.state.service = state
    app.openapi = openapi_with_limits(app, settings)  # type: ignore[method-assign]
    errors.install(app)
    app.include_router(system.router)
    app.include_router(tgi.router)
    app.include_router(openai.router)
    app.include_router(chat.router)
    app.include_router(tokenizer.router)  # issue 22
    app.include_router(admin.router)
    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    playground.install(app)
    app.add_middleware(
        RequestContextMiddleware, metrics=state.metrics, max_body_bytes=settings.max_body_bytes,
        upload_limits={"/v1/files": settings.max_upload_bytes + MULTIPART_FRAMING_BYTES},
    )
    if settings.cors_origins:  # outermost, so that refusals (413, 401) carry CORS headers too
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, MODEL_HEADER, VERSION_HEADER],
        )
    return app


@asynccontextmanager
async def lifespan(state: ServiceState, control_address: str | None, app: FastAPI) -> AsyncIterator[None]:
    """Models served (by this front end's own control plane, or a supervisor's) before the first
    request; on the way out, a drain, then the engines closed."""
    settings, metrics = state.settings, state.metrics
    try:
        models = await (follow_supervisor(control_address, state) if control_address
                        else run_control_plane(settings, metrics))
    except NoModelsError as exc:
        state.startup_error = str(exc)
        logger.error("cannot start: %s", exc)
        raise
    metrics.count_control_plane(lambda: (models.reloads, models.load_failures))
    state.models, state.loop = models, asyncio.get_running_loop()
    polling, scheduler, keeping = None, None, None
    if isinstance(models, LocalModels):  # this front end is the control plane: it runs the jobs too
        if settings.models_poll_s:
            polling = asyncio.create_task(models.watcher.poll(settings.models_poll_s))
        keeping = asyncio.create_task(models.keeper.run())  # engines that die are restarted
        local = models
        scheduler = start_scheduler(settings, asyncio.get_running_loop(), lambda: local.reload(explicit=False))
    collector.settle()  # what the front end made so far lives as long as it: out of the collector's way
    logger.info("serving %s (default %s)", ", ".join(v.name for v in models.ready), models.default_model)
    try:
        yield
    finally:
        state.draining = True
        if scheduler is not None:  # its runs checkpoint and stop; their jobs resume at the next start
            await asyncio.to_thread(scheduler.stop)
        for task in (polling, keeping):
            if task is not None:
                task.cancel()
        await models.stop()
        if isinstance(models, LocalModels):
            await asyncio.to_thread(models.registry.close, settings.shutdown_grace_s)
        models.close()


async def run_control_plane(settings: Settings, metrics: ServiceMetrics) -> LocalModels:
    """Load every model and start its engine here; the front end follows this control plane."""
    registry = await asyncio.to_thread(Registry.load, settings, metrics.for_model)
    await asyncio.to_thread(registry.start)
    models = LocalModels(registry, metrics)
    await models.refresh()
    return models


async def follow_supervisor(address: str, state: ServiceState) -> FrontModels:
    models = await RemoteModels.connect(address, state.metrics)
    models.on_drain = lambda: state.request_drain()
    return models
