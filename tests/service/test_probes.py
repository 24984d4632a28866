"""The orchestrators' probes: liveness answers 200 whenever the process answers; readiness only while a
the default model is ready and no drain has begun. /health keeps its own body and codes."""

from __future__ import annotations

import shutil

import httpx
import pytest

from service.frontend.app import create_app
from tests.service.helpers import TINY_NAMES, running_app, service_state, settings_for

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer admin-secret"}


async def probes(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
    return await client.get("/health/live"), await client.get("/health/ready")


async def test_a_serving_replica_is_alive_and_ready_with_every_model(client):
    live, ready = await probes(client)
    assert live.status_code == 200 and live.json()["status"] == "alive" and live.json()["uptime_s"] >= 0
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "reason": None, "default_model": "tiny-gpt",
                            "default_status": "ready", "ready_models": sorted(TINY_NAMES)}


async def test_before_the_models_are_served_it_is_alive_but_not_ready(tiny_models):
    app = create_app(settings_for(tiny_models))  # its lifespan not run: nothing loaded
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://charlm.test") as client:
        live, ready = await probes(client)
    assert live.status_code == 200
    assert ready.status_code == 503 and ready.json()["status"] == "starting"
    assert ready.json()["reason"] == "the models are loading"


async def test_a_draining_replica_is_alive_but_not_ready(serve):
    async with serve() as (client, app):
        service_state(app).draining = True
        live, ready = await probes(client)
        health = await client.get("/health")
    assert live.status_code == 200
    assert ready.status_code == 503 and ready.json()["status"] == "draining" and ready.json()["ready_models"] == []
    assert health.status_code == 503 and health.json()["status"] == "draining"  # /health as before


async def test_readiness_follows_the_default_model_not_the_others(tiny_models, tmp_path):
    """Another model unloaded leaves the replica ready; the default unloaded makes it not ready (and a
    request that names no model a 503, never another model's text) until it is back."""
    models = tmp_path / "models"
    for name in ("tiny-gpt", "tiny-lstm"):
        shutil.copytree(tiny_models / name, models / name)
    async with running_app(settings_for(models, models_poll_s=0, admin_key="admin-secret")) as (client, _):
        assert (await client.post("/admin/models/tiny-lstm/unload", headers=ADMIN)).status_code == 200
        _, ready = await probes(client)
        assert ready.status_code == 200 and ready.json()["ready_models"] == ["tiny-gpt"]
        assert (await client.post("/admin/models/tiny-gpt/unload", headers=ADMIN)).status_code == 200
        assert (await client.post("/admin/reload", headers=ADMIN)).status_code == 200
        assert (await client.post("/admin/models/tiny-gpt/unload", headers=ADMIN)).status_code == 200
        live, ready = await probes(client)
        health = await client.get("/health")
        assert live.status_code == 200
        assert ready.status_code == 503 and ready.json()["status"] == "default_not_ready"
        assert ready.json()["reason"] == "the default model 'tiny-gpt' is unloaded"
        assert ready.json()["ready_models"] == ["tiny-lstm"]
        unnamed = await client.post("/generate", json={"inputs": "the", "parameters": {"max_new_tokens": 2}})
        assert unnamed.status_code == 503 and unnamed.headers["retry-after"]
        assert unnamed.json()["error"].startswith("model 'tiny-gpt' was unloaded by an administrator")
        # /health keeps its body: the process serves, the model is listed as unloaded.
        assert health.status_code == 200 and health.json()["models"]["tiny-gpt"]["status"] == "unloaded"
        assert (await client.post("/admin/reload", headers=ADMIN)).status_code == 200
        _, ready = await probes(client)
        assert ready.status_code == 200 and ready.json()["ready_models"] == ["tiny-gpt", "tiny-lstm"]
