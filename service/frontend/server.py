"""A front end's HTTP server: uvicorn, draining before it stops; and a front-end process's entry.

On SIGTERM or Ctrl-C (or, for one of several front ends, the supervisor's word): /health turns 503
and new requests get 503 at once, streams in flight finish (up to shutdown_grace_s), then the
server stops. A second signal stops it at once. One of several front ends leaves Ctrl-C to its
supervisor, which tells every front end to drain once.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from types import FrameType

import uvicorn

from service.frontend.app import create_app
from service.frontend.state import ServiceState
from service.process_title import set_title
from service.settings import Settings

logger = logging.getLogger(__name__)
DRAIN_POLL_S = 0.05
CANCEL_WAIT_S = 5.0  # after the grace period, for cancelled streams to send their final event


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState, supervised: bool = False):
        super().__init__(config)
        self.state = state
        self.supervised = supervised  # one of several front ends: Ctrl-C is the supervisor's

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.supervised and sig == signal.SIGINT:
            return
        if self.state.draining or self.state.models is None:
            super().handle_exit(sig, frame)
            return
        self.drain()

    def drain(self) -> None:
        """Stop taking requests, let those in flight finish, then stop (once, whoever asks)."""
        if self.state.draining:
            return
        self.state.draining = True
        models, loop = self.state.models, self.state.loop
        if models is not None and loop is not None:  # requests waiting for an engine get their 503 now
            loop.call_soon_threadsafe(models.stop_waiting)
        logger.info("draining: finishing %d sequences before exit", self.state.active_sequences())
        threading.Thread(target=self._exit_when_idle, name="drain", daemon=True).start()

    def _exit_when_idle(self) -> None:
        deadline = time.monotonic() + self.state.settings.shutdown_grace_s
        while self.state.active_sequences() and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
        models, loop = self.state.models, self.state.loop
        if self.state.active_sequences() and models is not None and loop is not None:
            logger.warning("grace period over: cancelling %d sequences", self.state.active_sequences())
            loop.call_soon_threadsafe(models.cancel_all)  # each stream still gets its final event
            while self.state.active_sequences() and time.monotonic() < deadline + CANCEL_WAIT_S:
                time.sleep(DRAIN_POLL_S)
        self.should_exit = True


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port,  # type: ignore[arg-type]
                          log_level=settings.log_level, timeout_graceful_shutdown=int(CANCEL_WAIT_S))


def run_front_end(settings: Settings, control_address: str, sockets: list[socket.socket], index: int,
                  workers: int) -> None:
    """One of several front-end processes: serve on the supervisor's sockets, following its control
    plane; the supervisor replaces this process if it dies."""
    set_title(f"front end {index}", f"charlm-front-{index}")
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(levelname)s:     [front end {index}] %(message)s")
    app = create_app(settings, control_address)
    state: ServiceState = app.state.service
    server = DrainingServer(uvicorn_config(app, settings), state, supervised=True)
    state.request_drain = server.drain  # the supervisor's word, or its going away
    state.front_end, state.workers = index, workers
    server.run(sockets=sockets)
