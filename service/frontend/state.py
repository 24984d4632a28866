"""What a running front end holds: settings, metrics, the models it serves, and whether it is draining."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from collections.abc import Callable

from fastapi import Request
from pydantic import SecretStr

from service.frontend.chat_prompt import ChatTemplates
from service.frontend.engine_client import EngineConnection
from service.frontend.errors import ServiceError
from service.frontend.metrics import ServiceMetrics
from service.frontend.models import FrontModels, ModelUnavailableError, ModelView
from service.frontend.streams import Pacer
from service.jobs.store import Store
from service.settings import Settings


@dataclasses.dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    pacer: Pacer
    models: FrontModels | None = None  # None until the models are loaded
    loop: asyncio.AbstractEventLoop | None = None  # the front end's event loop, once it runs
    request_drain: Callable[[], None] = lambda: None  # set by the server that drains this front end
    front_end: int = 0  # which of the server's front ends this is
    workers: int = 1
    draining: bool = False
    startup_error: str | None = None
    started_at: float = dataclasses.field(default_factory=time.time)
    chat_templates: ChatTemplates = dataclasses.field(init=False)
    jobs: Store | None = dataclasses.field(init=False)  # files and training jobs, when training is on

    def __post_init__(self) -> None:
        self.chat_templates = ChatTemplates(self.settings)
        self.jobs = Store(self.settings.data_dir) if self.settings.training else None

    @property
    def ready(self) -> bool:
        return self.models is not None and not self.draining

    async def model(self, name: str | None, param: str = "model") -> tuple[ModelView, EngineConnection]:
        """The ready model for a request, and its engine's client: one on standby is loaded and one
        restarting waited for (within CHARLM_LOAD_WAIT_S); 404 naming the models that exist, or 503
        saying why the model cannot serve (with Retry-After)."""
        assert self.models is not None
        wait_s = min(self.settings.load_wait_s, self.settings.request_timeout_s)
        try:
            return await self.models.acquire(name, wait_s)
        except ModelUnavailableError as exc:
            if self.draining:
                raise ServiceError(503, "the service is shutting down and takes no new requests") from None
            raise ServiceError(503, str(exc), param=param if name else None, kind="unavailable",
                               code="model_not_ready") from None
        except LookupError as exc:
            raise ServiceError(404, str(exc), param=param, kind="not_found", code="model_not_found") from None

    def active_sequences(self) -> int:
        """This front end's sequences that have not ended (queued ones included)."""
        return self.models.in_flight() if self.models is not None else 0


async def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


async def ready_service(request: Request) -> ServiceState:
    """Dependency of every generation route: 503 while starting or draining, 401 without the key.
    (Dependencies are coroutines: FastAPI runs a plain function's in a worker thread, a thread hop
    per request.)"""
    state: ServiceState = request.app.state.service
    check_api_key(request, state.settings)
    if state.models is None:
        raise ServiceError(503, "the service is starting; models are loading")
    if state.draining:
        raise ServiceError(503, "the service is shutting down and takes no new requests")
    return state


def check_api_key(request: Request, settings: Settings) -> None:
    """With an API key configured, require `Authorization: Bearer <key>` (constant-time compare)."""
    if settings.api_key is not None and not bearer_matches(request, settings.api_key):
        raise ServiceError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")


async def admin_service(request: Request) -> ServiceState:
    """Dependency of the /admin routes: 403 when administration is off (no admin key configured),
    401 without the admin key (the API key does not open them), 503 while starting or draining."""
    state: ServiceState = request.app.state.service
    check_admin_key(request, state.settings, "administration is off: set CHARLM_ADMIN_KEY to use /admin")
    if state.models is None:
        raise ServiceError(503, "the service is starting; models are loading")
    if state.draining:
        raise ServiceError(503, "the service is shutting down")
    return state


async def training_service(request: Request) -> Store:
    """Dependency of the file and fine-tuning routes: 403 unless training is on (CHARLM_TRAINING) and an
    admin key is configured, 401 without the admin key (the API key does not open them)."""
    state: ServiceState = request.app.state.service
    if state.jobs is None:
        raise ServiceError(403, "training is off: start the server with CHARLM_TRAINING=1 (and CHARLM_ADMIN_KEY)",
                           kind="forbidden", code="training_disabled")
    check_admin_key(request, state.settings, "training needs an admin key: set CHARLM_ADMIN_KEY",
                    " (training and files need the admin key, not the API key)")
    return state.jobs


def check_admin_key(request: Request, settings: Settings, off: str, hint: str = "") -> None:
    """403 (`off`) when no admin key is configured, 401 without it; the API key never opens these."""
    if settings.admin_key is None:
        raise ServiceError(403, off, kind="forbidden")
    if not bearer_matches(request, settings.admin_key):
        raise ServiceError(401, f"missing or invalid admin key: send 'Authorization: Bearer <CHARLM_ADMIN_KEY>'{hint}",
                           code="invalid_admin_key")


def bearer_matches(request: Request, key: SecretStr) -> bool:
    """`Authorization: Bearer <key>`, compared in constant time."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.get_secret_value().encode())


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))
