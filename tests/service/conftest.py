"""The service in-process: app lifespan + httpx's ASGI transport, on the tiny fixture models."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings
from service.state import ServiceState

ARCHITECTURES = ["gpt", "lstm", "lstm_attention"]


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


def settings_for(models_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"models_dir": models_dir, "default_model": "tiny-gpt", "max_batch_size": 16}
    return Settings(**{**values, **overrides})


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        base_url = "http://charlm.test"
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=60) as client:
            yield client, app


Client = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, FastAPI]]]


@pytest.fixture()
def serve(tiny_models: Path) -> Client:
    """`async with serve(**settings) as (client, app)`: the app on the tiny models."""
    return lambda **overrides: running_app(settings_for(tiny_models, **overrides))


@pytest.fixture()
async def client(serve: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with serve() as (http, _):
        yield http


def service_state(app: FastAPI) -> ServiceState:
    state: ServiceState = app.state.service
    return state


def engine_of(app: FastAPI, model: str) -> Any:
    registry = service_state(app).registry
    assert registry is not None
    return registry.entries[model].engine
