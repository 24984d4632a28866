"""`charlm serve`: every setting is a flag too (`--max-batch-size 64` overrides CHARLM_MAX_BATCH_SIZE)."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from charlm.cli import CommandError
from service.frontend.app import create_app
from service.frontend.state import ServiceState
from service.settings import Settings

logger = logging.getLogger(__name__)
DRAIN_POLL_S = 0.05
CANCEL_WAIT_S = 5.0  # after the grace period, for cancelled streams to send their final event


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="serve the models over HTTP",
        description="Serve every model directory under --models-dir. Each flag overrides the "
        "environment variable CHARLM_<FLAG NAME>.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        described = f"{field.description or name} (env CHARLM_{name.upper()}; default {default!r})"
        parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=described)
    parser.set_defaults(run=run_serve)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CommandError(f"invalid settings: {problems}") from None


class DrainingServer(uvicorn.Server):
    """On SIGTERM or Ctrl-C: /health turns 503 and new requests get 503 at once, streams in flight
    finish (up to shutdown_grace_s), then the server stops. A second signal stops it at once."""

    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining or self.state.registry is None:
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        logger.info("draining: finishing %d sequences before exit", self.state.active_sequences())
        threading.Thread(target=self._exit_when_idle, name="drain", daemon=True).start()

    def _exit_when_idle(self) -> None:
        deadline = time.monotonic() + self.state.settings.shutdown_grace_s
        while self.state.active_sequences() and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
        if self.state.active_sequences() and self.state.registry is not None:
            logger.warning("grace period over: cancelling %d sequences", self.state.active_sequences())
            self.state.registry.cancel_all()  # each stream still gets its final event
            while self.state.active_sequences() and time.monotonic() < deadline + CANCEL_WAIT_S:
                time.sleep(DRAIN_POLL_S)
        self.should_exit = True


class StartupTracebackFilter(logging.Filter):
    """When no model loads, the reason is logged once, plainly; uvicorn's traceback of it is noise."""

    def __init__(self, state: ServiceState):
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.state.startup_error and record.getMessage().startswith("Traceback"))


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    logging.getLogger().setLevel(settings.log_level.upper())
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=int(CANCEL_WAIT_S))
    server = DrainingServer(config, app.state.service)
    logging.getLogger("uvicorn.error").addFilter(StartupTracebackFilter(app.state.service))
    try:
        server.run()
    except SystemExit:  # uvicorn exits this way when the lifespan fails
        if not app.state.service.startup_error:
            raise
    if app.state.service.startup_error:
        raise CommandError(app.state.service.startup_error)
    return 0
