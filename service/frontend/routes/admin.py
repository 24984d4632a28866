"""Administration: the models directory as the server sees it, reloading it, unloading a model.
Guarded by its own key (CHARLM_ADMIN_KEY); off when none is set."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from service.control.model_entry import ModelEntry
from service.frontend.errors import ServiceError
from service.frontend.schemas.errors import ADMIN_ERRORS, ADMIN_UNLOAD_ERRORS
from service.frontend.schemas.system import AdminModels, ReloadResult
from service.frontend.state import ServiceState, admin_service

router = APIRouter(prefix="/admin", tags=["admin"])
Admin = Annotated[ServiceState, Depends(admin_service)]


def admin_view(entry: ModelEntry, dtype_bytes: int) -> dict[str, Any]:
    view: dict[str, Any] = {"name": entry.name, "path": str(entry.path), **entry.describe()}
    if entry.loaded is not None and entry.status == "ready":
        view.update(loaded_at=entry.loaded_at, load_seconds=round(entry.load_s, 3),
                    weights_bytes=entry.loaded.model.num_parameters() * dtype_bytes)
        if entry.engine is not None:
            view.update({k: v for k, v in entry.engine.memory.items() if k.endswith("_bytes")})
    return view


@router.get("/models", response_model=AdminModels, responses=ADMIN_ERRORS)
async def admin_models(state: Admin) -> dict[str, Any]:
    """Every model directory the server knows: status, version (the weights' fingerprint), when it
    was loaded and how long that took, the memory it holds."""
    assert state.registry is not None
    dtype_bytes = state.registry.dtype.itemsize
    models = [admin_view(entry, dtype_bytes) for _, entry in sorted(state.registry.entries.items())]
    return {"models": models, "retiring": len(state.registry.retiring)}


@router.post("/reload", response_model=ReloadResult, responses=ADMIN_ERRORS)
async def reload(state: Admin) -> dict[str, Any]:
    """Look at the models directory now: load new and changed models, retire removed ones, load again
    the ones unloaded here and try the failed ones again. Answers once the changes are served."""
    assert state.watcher is not None
    return dataclasses.asdict(await state.watcher.reload(explicit=True))


@router.post("/models/{name}/unload", response_model=AdminModels, responses=ADMIN_UNLOAD_ERRORS)
async def unload(name: str, state: Admin) -> dict[str, Any]:
    """Stop serving a model: new requests get 404, running ones finish. It stays unloaded until its
    directory changes or `POST /admin/reload`."""
    assert state.registry is not None and state.watcher is not None
    entry = state.registry.entries.get(name)
    if entry is None:
        raise ServiceError(404, f"no model directory {name!r}; known: {', '.join(sorted(state.registry.entries))}",
                           param="name")
    if not await state.watcher.unload(name):
        status = state.registry.entries[name].status if name in state.registry.entries else "gone"
        raise ServiceError(409, f"model {name!r} is {status}, not ready: nothing to unload",
                           param="name", kind="conflict")
    return await admin_models(state)
