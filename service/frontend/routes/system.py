"""Operations routes: health, info and Prometheus metrics. Health and metrics need no API key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import charlm
from service.frontend.errors import RETRY_AFTER_S
from service.frontend.schemas.errors import TGI_AUTH
from service.frontend.schemas.system import HEALTH_RESPONSES, Info
from service.frontend.state import ServiceState, check_api_key, service_state

router = APIRouter(tags=["system"])


def model_statuses(state: ServiceState, memory: bool = False) -> dict[str, dict[str, Any]]:
    """Each model's status (ready, loading, unloaded or failed); with `memory`, what a ready
    model's engine took at startup too."""
    if state.registry is None:
        return {}
    statuses: dict[str, dict[str, Any]] = {}
    for name, entry in sorted(state.registry.entries.items()):
        statuses[name] = entry.describe()
        if memory and entry.status == "ready" and entry.engine is not None:
            statuses[name].update(entry.engine.memory)
    return statuses


@router.get("/health", response_model=None, responses=HEALTH_RESPONSES)
async def health(state: Annotated[ServiceState, Depends(service_state)]) -> JSONResponse:
    """200 with each model's status when serving; 503 while starting or draining."""
    status = "draining" if state.draining else ("ready" if state.registry is not None else "starting")
    body = {"status": status, "models": model_statuses(state)}
    if state.ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


@router.get("/info", response_model=Info, responses=TGI_AUTH)
async def info(request: Request, state: Annotated[ServiceState, Depends(service_state)]) -> dict[str, Any]:
    """Version, device, dtype, limits and models (failed ones with their loader's message)."""
    check_api_key(request, state.settings)
    settings, registry = state.settings, state.registry
    return {
        "version": charlm.__version__,
        "device": None if registry is None else str(registry.device),
        "dtype": None if registry is None else str(registry.dtype).removeprefix("torch."),
        "default_model": None if registry is None else registry.default_model,
        "limits": {
            "max_batch_size": settings.max_batch_size if registry is None else registry.max_batch_size,
            "max_queued": settings.max_queued,
            "max_new_tokens": settings.max_new_tokens,
            "max_prompt_chars": settings.max_prompt_chars,
            "max_n": settings.max_n,
            "max_body_bytes": settings.max_body_bytes,
            "request_timeout_s": settings.request_timeout_s,
        },
        "models": model_statuses(state, memory=True),
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: Annotated[ServiceState, Depends(service_state)]) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
