"""`charlm serve --workers N`: one control plane, N HTTP front-end processes, one engine per model.

The supervisor (this process) runs the control plane: it loads the models, starts one engine
process per model (which owns the device), follows the models directory, and tells the front ends
what is served (`service.control.server`). It binds the port once and starts N front-end processes
that accept on it together (`service.frontend.server.run_front_end`); each talks to every engine
directly. A front end that dies is replaced; the engines cancel what it was running. On SIGTERM or
Ctrl-C every front end drains (its streams finish), then the engines close and the supervisor
exits; a second signal ends everything at once.

Prometheus metrics of every process go to files in one directory (PROMETHEUS_MULTIPROC_DIR), so
that whichever front end answers /metrics reports the whole server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from service.control.keeper import EngineKeeper
from service.control.live_models import ModelWatcher
from service.control.registry import Registry
from service.control.server import ControlServer
from service.engine.forkserver import child_context
from service.frontend.metrics import MULTIPROCESS_DIR
from service.frontend.server import CANCEL_WAIT_S, run_front_end
from service.jobs.service import start_scheduler
from service.process_title import set_title
from service.settings import Settings

logger = logging.getLogger(__name__)
MONITOR_S = 0.25  # how often front ends are looked at (the engines: `service.control.keeper`)
RESTARTS_PER_MINUTE = 10  # a front end that dies more often than this means the server cannot serve
EXIT_MARGIN_S = 10.0  # beyond a front end's own drain, before it is killed


class BindError(Exception):
    """The port cannot be listened on (in use, or not allowed)."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every front end accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings, workers: int):
        self.settings = settings
        self.workers = workers
        self.front_ends: dict[int, BaseProcess] = {}  # by index
        self.restarts: list[float] = []
        self.draining = False
        self.failed: str | None = None
        self.context = child_context()

    def run(self) -> int:
        """Serve until SIGTERM or Ctrl-C; the exit status (non-zero when the server could not serve)."""
        set_title("supervisor", "charlm-super")
        return asyncio.run(self._main())

    async def _main(self) -> int:
        sock = bind(self.settings.host, self.settings.port)  # first: a busy port fails before any model loads
        # Set before the first engine starts the fork server, whose environment every front end inherits
        metrics_dir = Path(tempfile.mkdtemp(prefix="charlm-metrics-"))
        os.environ[MULTIPROCESS_DIR] = str(metrics_dir)
        runtime: Path | None = None
        try:
            registry = await asyncio.to_thread(Registry.load, self.settings)
            runtime = registry.config.runtime_dir
            await asyncio.to_thread(registry.start)
            control = ControlServer(registry, str(runtime / "control.sock"))
            control.watcher = watcher = ModelWatcher(registry, self.settings.models_dir, control.changed)
            control.keeper = EngineKeeper(registry, watcher)
            await control.start()
            return await self._serve(sock, registry, control, watcher)
        finally:
            sock.close()
            for directory in (runtime, metrics_dir):
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)

    async def _serve(self, sock: socket.socket, registry: Registry, control: ControlServer,
                     watcher: ModelWatcher) -> int:
        for index in range(self.workers):
            self._start_front_end(index, sock, control.path)
        host, port = sock.getsockname()[:2]
        logger.info("serving on http://%s:%d with %d front ends", host, port, self.workers)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, stop)
        poll_s = self.settings.models_poll_s
        polling = asyncio.create_task(watcher.poll(poll_s)) if poll_s else None
        scheduler = start_scheduler(self.settings, loop, lambda: watcher.reload(explicit=False))
        assert control.keeper is not None
        keeping = asyncio.create_task(control.keeper.run())  # engines that die are restarted
        while not stop.is_set() and self.failed is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MONITOR_S)
            if not stop.is_set():  # never start a front end into a drain
                self._replace_dead_front_ends(sock, control.path)
        if scheduler is not None:  # its runs checkpoint and stop; their jobs resume at the next start
            await asyncio.to_thread(scheduler.stop)
        if polling is not None:
            polling.cancel()
        await self._drain(control)
        keeping.cancel()  # engines that die during the drain are restarted: streams may still need them
        await control.keeper.stop()
        await watcher.stop()
        await asyncio.to_thread(registry.close, 0.0)
        await control.close()
        if self.failed:
            logger.error("%s", self.failed)
            return 1
        return 0

    def _on_signal(self, stop: asyncio.Event) -> None:
        if stop.is_set():  # the second signal: everything ends now
            logger.warning("second signal: stopping at once")
            for process in self.front_ends.values():
                process.kill()
            os._exit(1)
        logger.info("draining: every front end finishes its streams, then the engines close")
        stop.set()

    def _start_front_end(self, index: int, sock: socket.socket, control_path: str) -> None:
        process = self.context.Process(target=run_front_end, name=f"front-end-{index}", daemon=False,
                                       args=(self.settings, control_path, [sock], index, self.workers))
        process.start()
        self.front_ends[index] = process

    def _replace_dead_front_ends(self, sock: socket.socket, control_path: str) -> None:
        for index, process in list(self.front_ends.items()):
            if process.exitcode is None:
                continue
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            if len(self.restarts) > RESTARTS_PER_MINUTE:
                self.failed = f"front ends exited {len(self.restarts)} times in a minute; the server stops"
                return
            logger.error("front end %d (pid %s) exited with status %s; starting another", index, process.pid,
                         process.exitcode)
            self._start_front_end(index, sock, control_path)

    async def _drain(self, control: ControlServer) -> None:
        """Every front end drains and exits (killed if it outlasts its drain by far)."""
        self.draining = True
        control.drain()
        deadline = time.monotonic() + self.settings.shutdown_grace_s + CANCEL_WAIT_S + EXIT_MARGIN_S
        for process in self.front_ends.values():
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                logger.warning("front end %s did not exit after draining; killing it", process.pid)
                process.kill()
                await asyncio.to_thread(process.join, 5)


def serve_with_supervisor(settings: Settings, workers: int) -> int:
    return Supervisor(settings, workers).run()



