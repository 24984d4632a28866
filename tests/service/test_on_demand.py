"""Models loaded on demand, as Ollama does it: CHARLM_MAX_LOADED caps the running engines (the others
wait on standby and load at their first request, the least recently used idle engine making room),
and CHARLM_KEEP_ALIVE unloads an engine idle that long (never the default model's)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.control.room import FRESH_S
from service.frontend.models import LocalModels
from tests.service.helpers import eventually, running_app, service_state, settings_for

pytestmark = pytest.mark.anyio
NAMES = ("tiny-gpt", "tiny-lstm", "tiny-mingru")


@pytest.fixture(scope="module")
def three_models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("on-demand") / "models"
    for name in NAMES:
        shutil.copytree(tiny_models / name, directory / name)
    return directory


async def generate(client: httpx.AsyncClient, model: str | None, chars: int = 12, seed: int = 5) -> httpx.Response:
    body = {"inputs": "the ", "parameters": {"max_new_tokens": chars, "seed": seed}} | ({"model": model} if model
                                                                                        else {})
    return await client.post("/generate", json=body)


async def listed(client: httpx.AsyncClient) -> dict[str, bool]:
    return {card["id"]: card["loaded"] for card in (await client.get("/v1/models")).json()["data"]}


async def test_under_a_cap_models_load_at_their_first_request_and_the_least_recently_used_makes_room(three_models):
    async with running_app(settings_for(three_models, max_loaded=2, models_poll_s=0)) as (client, app):
        assert await listed(client) == {"tiny-gpt": True, "tiny-lstm": True, "tiny-mingru": False}
        standby = (await client.get("/v1/models/tiny-mingru")).json()
        assert standby["status"] == "standby" and standby["architecture"] is None  # described, not loaded
        assert (await generate(client, None)).status_code == 200  # the default was used last
        await idle_for_a_moment(app)
        answer = await generate(client, "tiny-mingru")
        assert answer.status_code == 200 and answer.headers["x-charlm-model"] == "tiny-mingru"
        # tiny-lstm, the least recently used idle engine, made room.
        assert await listed(client) == {"tiny-gpt": True, "tiny-lstm": False, "tiny-mingru": True}
        await idle_for_a_moment(app, "tiny-mingru")
        again = await generate(client, "tiny-lstm")
        assert again.status_code == 200, again.text
        # The default takes its turn too: it was used longest ago. It loads again at its next request.
        assert await listed(client) == {"tiny-gpt": False, "tiny-lstm": True, "tiny-mingru": True}
        assert (await client.get("/health/ready")).status_code == 200  # on standby, it loads when asked
        await idle_for_a_moment(app, "tiny-lstm", "tiny-mingru")
        assert (await generate(client, None)).headers["x-charlm-model"] == "tiny-gpt"
        card = (await client.get("/v1/models/tiny-mingru")).json()
        assert card["loaded"] is False and card["architecture"] == "mingru"  # known from when it ran


async def test_seeded_text_is_the_same_whether_the_model_was_resident_or_loaded_on_demand(three_models):
    async with running_app(settings_for(three_models, models_poll_s=0)) as (client, _):
        resident = (await generate(client, "tiny-mingru", chars=30)).json()
    async with running_app(settings_for(three_models, max_loaded=1, models_poll_s=0)) as (client, _):
        on_demand = (await generate(client, "tiny-mingru", chars=30)).json()
    assert on_demand == resident


async def test_an_engine_with_sequences_is_never_evicted(three_models):
    """With the only evictable engine busy for longer than CHARLM_LOAD_WAIT_S, a request for a model on
    standby gets 503 and Retry-After."""
    async with running_app(settings_for(three_models, max_loaded=2, models_poll_s=0, max_new_tokens=100_000,
                                        load_wait_s=1)
                           ) as (client, app):
        busy = [asyncio.create_task(generate(client, name, chars=100_000)) for name in ("tiny-gpt", "tiny-lstm")]
        await eventually(lambda: pulse_load(app, "tiny-gpt") > 0 and pulse_load(app, "tiny-lstm") > 0,
                         "the long generations to run")
        refused = await generate(client, "tiny-mingru")
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "all 2 loaded models are busy" in refused.json()["error"]
        assert await listed(client) == {"tiny-gpt": True, "tiny-lstm": True, "tiny-mingru": False}
        for task in busy:
            task.cancel()


async def test_keep_alive_unloads_an_idle_engine_but_never_the_default(three_models):
    async with running_app(settings_for(three_models, keep_alive="1s", models_poll_s=0)) as (client, _):
        assert await listed(client) == dict.fromkeys(NAMES, True)
        await eventually_async(lambda: listed(client), {"tiny-gpt": True, "tiny-lstm": False, "tiny-mingru": False})
        health = (await client.get("/health")).json()["models"]
        assert health["tiny-lstm"]["status"] == "standby"
        assert (await generate(client, "tiny-lstm")).status_code == 200  # and it comes back on demand
        assert (await listed(client))["tiny-lstm"] is True


async def idle_for_a_moment(app: Any, *names: str) -> None:
    """Until the engines say they are idle (their pulse), so the least recently used one is known."""
    names = names or ("tiny-gpt", "tiny-lstm")
    await eventually(lambda: all(pulse_load(app, name) == 0 and idle_seconds(app, name) > 0 for name in names),
                     "the engines to be idle")


def pulse(app: Any, name: str) -> tuple[float, float, int]:
    models = service_state(app).models
    assert isinstance(models, LocalModels)
    engine = models.registry.entries[name].engine
    return engine.pulse() if engine is not None else (0.0, 0.0, 0)


def pulse_load(app: Any, name: str) -> int:
    return pulse(app, name)[2]


def idle_seconds(app: Any, name: str) -> float:
    return pulse(app, name)[1]


async def eventually_async(read: Callable[[], Awaitable[object]], expected: object, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"still {got}, not {expected}"
        await asyncio.sleep(0.1)


async def test_the_wait_for_a_model_loading_on_demand_is_bounded_and_the_load_goes_on(three_models):
    """A request whose time limit ends while its model loads gets 503 saying so; the load goes on, and
    the next request finds the model ready."""
    async with running_app(settings_for(three_models, max_loaded=2, models_poll_s=0, request_timeout_s=0.001)
                           ) as (client, app):
        await asyncio.sleep(FRESH_S)  # the engines started with the server may make room from now on
        await idle_for_a_moment(app)
        late = await generate(client, "tiny-mingru")
        assert late.status_code == 503 and late.headers["retry-after"]
        assert late.json()["error"] == "model 'tiny-mingru' is standby: it was not ready within 0.001 s"
        await eventually_async(lambda: mingru_loaded(client), True)


async def mingru_loaded(client: httpx.AsyncClient) -> bool:
    loaded = await listed(client)
    return loaded["tiny-mingru"] and sum(loaded.values()) == 2
