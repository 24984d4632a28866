"""The FastAPI application: routers, error handlers, middleware; models load in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import charlm
from service.control.live_models import ModelWatcher
from service.control.registry import NoModelsError, Registry
from service.frontend import errors
from service.frontend.generation import Mailbox
from service.frontend.metrics import ServiceMetrics
from service.frontend.middleware import MODEL_HEADER, REQUEST_ID_HEADER, VERSION_HEADER, RequestContextMiddleware
from service.frontend.openapi import openapi_with_limits
from service.frontend.routes import admin, openai, playground, system, tgi, tokenizer
from service.frontend.state import ServiceState
from service.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = ServiceState(settings, ServiceMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            registry = await asyncio.to_thread(Registry.load, settings, state.metrics)
            await asyncio.to_thread(registry.start)
        except NoModelsError as exc:
            state.startup_error = str(exc)
            logger.error("cannot start: %s", exc)
            raise
        state.mailbox = Mailbox(asyncio.get_running_loop())
        state.registry = registry
        state.watcher = watcher = ModelWatcher(registry, settings.models_dir)
        polling = asyncio.create_task(watcher.poll(settings.models_poll_s)) if settings.models_poll_s else None
        names = ", ".join(e.name for e in registry.ready)
        logger.info("serving %s (default %s)", names, registry.default_model)
        try:
            yield
        finally:
            state.draining = True
            if polling is not None:
                polling.cancel()
            await watcher.stop()
            await asyncio.to_thread(registry.close, settings.shutdown_grace_s)

    app = FastAPI(
        title="charlm",
        version=charlm.__version__,
        description="Character-level language models behind TGI- and OpenAI-compatible APIs.",
        lifespan=lifespan,
    )
    app.state.service = state
    app.openapi = openapi_with_limits(app, settings)  # type: ignore[method-assign]
    errors.install(app)
    app.include_router(system.router)
    app.include_router(tgi.router)
    app.include_router(openai.router)
    app.include_router(tokenizer.router)  # issue 22
    app.include_router(admin.router)
    playground.install(app)
    app.add_middleware(
        RequestContextMiddleware, metrics=state.metrics, max_body_bytes=settings.max_body_bytes
    )
    if settings.cors_origins:  # outermost, so that refusals (413, 401) carry CORS headers too
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, MODEL_HEADER, VERSION_HEADER],
        )
    return app
