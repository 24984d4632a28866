"""`charlm serve`: every setting is a flag too (`--max-batch-size 64` overrides CHARLM_MAX_BATCH_SIZE)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
from typing import Any

from pydantic import ValidationError

from charlm.cli import CommandError
from charlm.cpus import available_cpus
from service.control.registry import NoModelsError
from service.frontend.app import create_app
from service.frontend.server import DrainingServer, uvicorn_config
from service.frontend.state import ServiceState
from service.process_title import set_title
from service.settings import Settings
from service.supervisor import BindError, bind, serve_with_supervisor

logger = logging.getLogger(__name__)


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


def require_extras(settings: Settings) -> None:
    """What the settings ask for beyond what `pip install charlm` brings fails now, naming the extra
    that brings it, rather than as an import error once the server has started."""
    if settings.training and settings.train_executor == "ray" and importlib.util.find_spec("ray") is None:
        raise CommandError("CHARLM_TRAIN_EXECUTOR=ray needs Ray, which the ray extra installs: "
                           "pip install 'charlm[ray]'")


class StartupTracebackFilter(logging.Filter):
    """When no model loads, the reason is logged once, plainly; uvicorn's traceback of it is noise."""

    def __init__(self, state: ServiceState):
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.state.startup_error and record.getMessage().startswith("Traceback"))


def resolve_workers(settings: Settings) -> int:
    """HTTP front ends: the setting, or by the CPUs this process may use (0): one below four, where
    the engines need every CPU there is; above, a quarter of them, at most eight."""
    if settings.workers:
        return settings.workers
    cores = available_cpus()
    return 1 if cores < 4 else min(8, cores // 4)


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    require_extras(settings)
    logging.getLogger().setLevel(settings.log_level.upper())
    workers = resolve_workers(settings)
    try:  # a busy port fails now, before any model loads (the server binds it again to serve)
        bind(settings.host, settings.port).close()
    except BindError as exc:
        raise CommandError(str(exc)) from None
    if workers > 1:
        if not settings.engine_process:
            raise CommandError(f"{workers} front ends need engines in processes of their own: "
                               "CHARLM_ENGINE_PROCESS=false works with CHARLM_WORKERS=1 only")
        try:
            return serve_with_supervisor(settings, workers)
        except (NoModelsError, BindError) as exc:
            raise CommandError(str(exc)) from None
    set_title("server", "charlm-server")
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(app, settings), app.state.service)
    logging.getLogger("uvicorn.error").addFilter(StartupTracebackFilter(app.state.service))
    try:
        server.run()
    except SystemExit:  # uvicorn exits this way when the lifespan fails
        if not app.state.service.startup_error:
            raise
    if app.state.service.startup_error:
        raise CommandError(app.state.service.startup_error)
    return 0
