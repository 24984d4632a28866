"""Operations routes: health, probes, info and Prometheus metrics. Health, the probes and metrics need
no API key.

Orchestrators ask two different questions, and each has its own route:
- `/health/live` (liveness): does this process still answer? 200 whenever the event loop runs, with or
  without a ready model and while draining: restarting a replica cures neither a broken model
  directory nor a drain, and a liveness that failed on them would restart every replica at once.
- `/health/ready` (readiness): should requests come here? 503 before the models are served, while the
  default model cannot serve (failed, unloaded, removed: a request that names no model would get
  503), and from the first moment of a drain until exit. A drain fails readiness while the server
  still accepts connections, so that a load balancer which learns of it by probing moves new
  requests away before any is refused.
Each front-end process answers from its own ServiceState.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

import charlm
from service.frontend.engine_client import EngineConnection
from service.frontend.errors import RETRY_AFTER_S
from service.frontend.models import FrontModels, ModelView
from service.frontend.schemas.errors import TGI_AUTH
from service.frontend.schemas.system import HEALTH_RESPONSES, READY_RESPONSES, Info, Liveness
from service.frontend.state import ServiceState, check_api_key, service_state

router = APIRouter(tags=["system"])
SERVES_AFTER_A_WAIT = ("ready", "loading", "restarting", "standby")  # a default in these keeps the replica ready


def describe(models: FrontModels, view: ModelView, client: EngineConnection | None) -> dict[str, Any]:
    """A model's status and what goes with it, for /health, /info and /admin/models."""
    status = models.status(view)
    described: dict[str, Any] = {"status": status}
    if status == "ready" and client is not None:
        described.update(version=view.version, active=client.active, queued=client.queued)
    elif status in ("failed", "restarting"):  # restarting: why its last engine went
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
    if state.ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


@router.get("/health/live", response_model=Liveness)
async def live(state: Annotated[ServiceState, Depends(service_state)]) -> dict[str, Any]:
    """Liveness: 200 while this process answers, whatever its models' state and while it drains."""
    return {"status": "alive", "uptime_s": round(time.time() - state.started_at, 3)}


def readiness(state: ServiceState) -> tuple[str, str | None, list[str]]:
    """(status, why not ready or None, ready models) of this front end."""
    if state.draining:
        return "draining", "the service is shutting down and takes no new requests", []
    models = state.models
    if models is None:
        return "starting", "the models are loading", []
    ready = sorted(view.name for view in models.ready)
    default = models.views.get(models.default_model)
    # Loading, restarting or on standby, the default serves: a request waits for its engine
    # (CHARLM_LOAD_WAIT_S), and a restart takes well under a second on a CPU; failing readiness then
    # would flap for nothing.
    if default is None or models.status(default) not in SERVES_AFTER_A_WAIT:
        status = models.status(default) if default is not None else "not a model directory"
        reason = models.reason(default) if default is not None else None
        return ("default_not_ready", f"the default model {models.default_model!r} is {status}"
                + (f": {reason}" if reason else ""), ready)
    return "ready", None, ready


@router.get("/health/ready", response_model=None, responses=READY_RESPONSES)
async def ready(state: Annotated[ServiceState, Depends(service_state)]) -> JSONResponse:
    """Readiness: 200 while the default model (the model of every request that names none) serves:
    ready, or loading, restarting or on standby (its requests wait for the engine); 503 while
    starting, while the default is failed, unloaded or removed, and from the first moment of a drain
    (SIGTERM) until exit. `ready_models` lists the models that can serve now."""
    status, reason, models = readiness(state)
    default = state.models.default_model if state.models is not None else None
    default_status = None
    if state.models is not None and (view := state.models.views.get(state.models.default_model)) is not None:
        default_status = state.models.status(view)
    body = {"status": status, "reason": reason, "default_model": default, "default_status": default_status,
            "ready_models": models}
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


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
            "max_upload_bytes": settings.max_upload_bytes,
        },
        "training": settings.training,
        "models": model_statuses(state, memory=True),
        "front_end": {"index": state.front_end, "workers": state.workers, "pid": os.getpid()},
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: Annotated[ServiceState, Depends(service_state)]) -> Response:
    """Prometheus text format: the totals of the whole server, whichever front end answers."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
