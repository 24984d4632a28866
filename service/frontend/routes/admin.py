"""Administration: the models directory as the server sees it, reloading it, unloading a model.
Guarded by its own key (CHARLM_ADMIN_KEY); off when none is set."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from service.frontend.errors import ServiceError
from service.frontend.models import ModelView
from service.frontend.routes.system import describe
from service.frontend.schemas.errors import ADMIN_ERRORS, ADMIN_UNLOAD_ERRORS
from service.frontend.schemas.system import AdminModels, ReloadResult
from service.frontend.state import ServiceState, admin_service

router = APIRouter(prefix="/admin", tags=["admin"])
Admin = Annotated[ServiceState, Depends(admin_service)]


def admin_view(state: ServiceState, view: ModelView) -> dict[str, Any]:
    models = state.models
    assert models is not None
    described = describe(models, view, models.clients.get(view.engine))
    result: dict[str, Any] = {"name": view.name, "path": str(view.path), **described}
    if view.info is not None and described["status"] == "ready":
        result.update(loaded_at=view.loaded_at, load_seconds=round(view.load_s, 3),
                      weights_bytes=view.info.parameters * models.facts.dtype_bytes)
        result.update({k: v for k, v in view.memory.items() if k.endswith("_bytes")}, engine_pid=view.pid)
    return result


@router.get("/models", response_model=AdminModels, responses=ADMIN_ERRORS)
async def admin_models(state: Admin) -> dict[str, Any]:
    """Every model directory the server knows: status, version (the weights' fingerprint), when it
    was loaded and how long that took, the memory it holds."""
    assert state.models is not None
    models = [admin_view(state, view) for _, view in sorted(state.models.views.items())]
    return {"models": models, "retiring": len(state.models.still_retiring())}


@router.post("/reload", response_model=ReloadResult, responses=ADMIN_ERRORS)
async def reload(state: Admin) -> dict[str, Any]:
    """Look at the models directory now: load new and changed models, retire removed ones, load again
    the ones unloaded here and try the failed ones again. Answers once the changes are served."""
    assert state.models is not None
    return dataclasses.asdict(await state.models.reload(explicit=True))


@router.post("/models/{name}/unload", response_model=AdminModels, responses=ADMIN_UNLOAD_ERRORS)
async def unload(name: str, state: Admin) -> dict[str, Any]:
    """Stop serving a model: new requests get 404, running ones finish. It stays unloaded until its
    directory changes or `POST /admin/reload`."""
    assert state.models is not None
    views = state.models.views
    if name not in views:
        raise ServiceError(404, f"no model directory {name!r}; known: {', '.join(sorted(views))}", param="name")
    if not await state.models.unload(name):
        status = state.models.status(state.models.views[name]) if name in state.models.views else "gone"
        raise ServiceError(409, f"model {name!r} is {status}, not ready: nothing to unload",
                           param="name", kind="conflict")
    return await admin_models(state)
