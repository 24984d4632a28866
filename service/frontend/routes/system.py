"""Operations routes: health, info and Prometheus metrics. Health and metrics need no API key."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

import charlm
from service.frontend.engine_client import EngineConnection
from service.frontend.models import FrontModels, ModelView
from service.frontend.schemas.errors import TGI_AUTH
from service.frontend.schemas.system import HEALTH_RESPONSES, Info
from service.frontend.state import ServiceState, check_api_key, service_state

router = APIRouter(tags=["system"])


def describe(models: FrontModels, view: ModelView, client: EngineConnection | None) -> dict[str, Any]:
    """A model's status and what goes with it, for /health, /info and /admin/models."""
    status = models.status(view)
    described: dict[str, Any] = {"status": status}
    if status == "ready" and client is not None:
        described.update(version=view.version, active=client.active, queued=client.queued)
    elif status == "failed":
        described["error"] = models.reason(view)
    if view.reload_error is not None:
        described["reload_error"] = view.reload_error
    return described


def model_statuses(state: ServiceState, memory: bool = False) -> dict[str, dict[str, Any]]:
    """Each model's status (ready, loading, unloaded or failed); with `memory`, what a ready
    model's engine took at startup too."""
    models = state.models
    if models is None:
        return {}
    statuses: dict[str, dict[str, Any]] = {}
    for name, view in sorted(models.views.items()):
        statuses[name] = describe(models, view, models.clients.get(view.engine))
        if memory and statuses[name]["status"] == "ready":
            statuses[name].update(view.memory)
    return statuses


@router.get("/health", response_model=None, responses=HEALTH_RESPONSES)
async def health(state: Annotated[ServiceState, Depends(service_state)]) -> JSONResponse:
    """200 with each model's status when serving; 503 while starting or draining."""
    status = "draining" if state.draining else ("ready" if state.models is not None else "starting")
    body = {"status": status, "models": model_statuses(state)}
    return JSONResponse(body, status_code=200 if state.ready else 503)


@router.get("/info", response_model=Info, responses=TGI_AUTH)
async def info(request: Request, state: Annotated[ServiceState, Depends(service_state)]) -> dict[str, Any]:
    """Version, device, dtype, limits and models (failed ones with their loader's message)."""
    check_api_key(request, state.settings)
    settings, models = state.settings, state.models
    facts = models.facts if models is not None else None
    return {
        "version": charlm.__version__,
        "device": facts.device if facts is not None else None,
        "dtype": facts.dtype if facts is not None else None,
        "default_model": models.default_model if models is not None else None,
        "limits": {
            "max_batch_size": facts.max_batch_size if facts is not None else settings.max_batch_size,
            "max_queued": settings.max_queued,
            "max_new_tokens": settings.max_new_tokens,
            "max_prompt_chars": settings.max_prompt_chars,
            "max_n": settings.max_n,
            "max_body_bytes": settings.max_body_bytes,
            "request_timeout_s": settings.request_timeout_s,
        },
        "models": model_statuses(state, memory=True),
        "front_end": {"index": state.front_end, "workers": state.workers, "pid": os.getpid()},
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: Annotated[ServiceState, Depends(service_state)]) -> Response:
    """Prometheus text format: the totals of the whole server, whichever front end answers."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
