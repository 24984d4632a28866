"""Fixtures for the service: the app on the tiny models, and a client for it."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.service.browser import chromium, open_page
from tests.service.helpers import LONG, live_server, running_app, settings_for

Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, FastAPI]]]


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture()
def serve(tiny_models: Path) -> Serve:
    """`async with serve(**settings) as (client, app)`: the app on the tiny models."""
    return lambda **overrides: running_app(settings_for(tiny_models, **overrides))


@pytest.fixture()
async def client(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    async with serve() as (http, _):
        yield http


@pytest.fixture()
def own_models(tiny_models: Path, tmp_path: Path) -> Path:
    """A models directory of the test's own, to add, replace and remove models in: tiny-gpt alone."""
    directory = tmp_path / "models"
    directory.mkdir()
    shutil.copytree(tiny_models / "tiny-gpt", directory / "tiny-gpt")
    return directory


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for a module of playground tests (skipped without it)."""
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def server(tiny_models: Path) -> Iterator[tuple[str, Any]]:
    """The app under uvicorn on a loopback port, for a module of browser tests: (url, app)."""
    with live_server(tiny_models, max_new_tokens=LONG) as running:
        yield running


@pytest.fixture()
def page(browser: Any, server: tuple[str, Any]) -> Iterator[Any]:
    """A fresh playground page on `server`."""
    with open_page(browser, server[0]) as page:
        yield page
