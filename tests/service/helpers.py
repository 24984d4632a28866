"""Helpers for the service tests: the app in-process, and what to look at inside it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from service.frontend.app import create_app
from service.frontend.models import LocalModels
from service.frontend.state import ServiceState
from service.settings import Settings
from tests.helpers import TINY, wait_until

ARCHITECTURES = sorted(TINY)  # every registered architecture (tests/charlm/test_models.py checks)
TINY_NAMES = {f"tiny-{architecture}" for architecture in ARCHITECTURES}  # the tiny_models fixture


def settings_for(models_dir: Path, **overrides: Any) -> Settings:
    """Settings for an app in this process, engines in threads (a process per engine would cost every
    test seconds of start-up; `serve_process` servers run them the default way, in processes)."""
    values: dict[str, Any] = {"models_dir": models_dir, "default_model": "tiny-gpt", "max_batch_size": 16,
                              "engine_process": False}
    return Settings(**{**values, **overrides})


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app with its lifespan running, and an httpx client over the ASGI transport."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        base_url = "http://charlm.test"
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=60) as client:
            yield client, app


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` on the event loop (leaving it to the app meanwhile) until it holds; fails
    naming `what` was awaited after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        await asyncio.sleep(0.01)


def service_state(app: FastAPI) -> ServiceState:
    state: ServiceState = app.state.service
    return state


def engine_handle_of(app: FastAPI, model: str) -> Any:
    """The control plane's handle on `model`'s engine (an engine process: its `pid` and `failure`)."""
    models = service_state(app).models
    assert isinstance(models, LocalModels)
    handle = models.registry.entries[model].engine
    assert handle is not None
    return handle


def engine_of(app: FastAPI, model: str) -> Any:
    """The `Engine` serving `model` (in these apps, engines run in threads of the app's process)."""
    models = service_state(app).models
    assert isinstance(models, LocalModels)
    handle = models.registry.entries[model].engine
    assert handle is not None and handle.engine is not None
    return handle.engine


LONG = 1_000_000  # characters: longer than any test waits


def cancelled_count(base: str) -> float:
    """`charlm_requests_cancelled_total` of the server at `base`, summed over the models."""
    lines = httpx.get(f"{base}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("charlm_requests_cancelled_total{"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(models_dir: Path, **overrides: Any) -> Iterator[tuple[str, FastAPI]]:
    """The app under uvicorn on a loopback port, in a thread of this process."""
    port = free_port()
    app = create_app(settings_for(models_dir, port=port, **overrides))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started), "server did not start"
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


@dataclasses.dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 180) -> None:
        """Until /health answers 200; fails with the server's output if it never does."""
        assert wait_until(lambda: healthy(self.url), timeout=timeout), self.output()


@contextlib.contextmanager
def serve_process(*args: str, prefix: tuple[str, ...] = (), environment: dict[str, str] | None = None
                  ) -> Iterator[ServerProcess]:
    """`charlm serve` as a separate process on a free port; `prefix` runs it through a wrapper
    command, `environment` adds variables. Its output goes to a file: a pipe nobody reads would
    stall a busy server."""
    port = free_port()
    command = [*prefix, sys.executable, "-m", "charlm", "serve", "--port", str(port), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(environment or {})}
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            yield ServerProcess(f"http://127.0.0.1:{port}", process, log)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(30)


def healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def publish_model(source: Path, target: Path) -> None:
    """Add or replace a model directory in one rename, as `charlm train` publishes its first
    checkpoint: assembled beside it under a hidden name (which the server never loads)."""
    staging = target.parent / f".{target.name}.staging"
    shutil.copytree(source, staging)
    old = target.parent / f".{target.name}.old"
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def fail_the_nth_step(engine: Any, monkeypatch: Any, n: int, message: str) -> None:
    """Fault injection, the model itself real: the engine's `n`th decode step raises
    RuntimeError(message), in whichever step it runs, the model's own or a CPU step compiled or
    exported from it (`charlm.cpu_step`)."""
    calls = {"n": 0}

    def failing(run: Callable[..., Any]) -> Callable[..., Any]:
        def run_or_fail(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError(message)
            return run(*args, **kwargs)

        return run_or_fail

    monkeypatch.setattr(engine.model, "step", failing(engine.model.step))
    cpu_step = engine._batch.decoder.cpu_step if engine._batch is not None else None
    if cpu_step is not None:
        monkeypatch.setattr(cpu_step, "run", failing(cpu_step.run))
        if cpu_step.unfiltered is not None:
            monkeypatch.setattr(cpu_step, "unfiltered", failing(cpu_step.unfiltered))
