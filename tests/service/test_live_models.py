"""Models that come, change and go while the app serves: each look at the directory is made
explicitly (`POST /admin/reload`, polling off), so these tests wait for nothing but the answers.
The same behaviour under polling, in a `charlm serve` process, is in test_live_models_process.py."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from charlm.checkpoint import WEIGHTS_FILE, load_model
from charlm.generation import generate as generate_locally
from charlm.sampling import SamplingParams
from tests.helpers import wait_until
from tests.service.helpers import (
    LONG,
    engine_handle_of,
    engine_of,
    eventually,
    live_server,
    publish_model,
    running_app,
    service_state,
    settings_for,
)

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": "Bearer admin-secret"}


def app_on(models_dir: Path, **overrides: object):  # type: ignore[no-untyped-def]
    settings = {"models_poll_s": 0, "admin_key": "admin-secret", **overrides}
    return running_app(settings_for(models_dir, **settings))


async def reload(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.post("/admin/reload", headers=ADMIN)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


async def health(client: httpx.AsyncClient) -> dict[str, dict[str, object]]:
    models: dict[str, dict[str, object]] = (await client.get("/health")).json()["models"]
    return models


async def generate(client: httpx.AsyncClient, model: str, chars: int = 40, seed: int = 3) -> httpx.Response:
    body = {"inputs": "the ", "model": model, "parameters": {"max_new_tokens": chars, "seed": seed}}
    return await client.post("/generate", json=body)


async def test_a_new_directory_is_loaded_and_served(own_models, tiny_models):
    async with app_on(own_models) as (client, _):
        assert (await generate(client, "fresh")).status_code == 404
        publish_model(tiny_models / "tiny-lstm", own_models / "fresh")
        assert await reload(client) == {"loaded": ["fresh"], "replaced": [], "removed": [], "failed": {}}
        response = await generate(client, "fresh")
        assert response.status_code == 200
        listed = {card["id"]: card for card in (await client.get("/v1/models")).json()["data"]}
        assert listed["fresh"]["architecture"] == "lstm"
        assert response.headers["x-charlm-model-version"] == listed["fresh"]["version"]
        assert (await health(client))["fresh"]["version"] == listed["fresh"]["version"]
        assert "charlm_model_reloads_total{model=\"fresh\"} 1.0" in (await client.get("/metrics")).text
        assert "charlm_models_loaded 2.0" in (await client.get("/metrics")).text


def stream_lines(client: httpx.Client, body: dict[str, object]) -> Iterator[str | httpx.Response]:
    """A TGI stream: first its response (headers), then its lines as they come."""
    with client.stream("POST", "/generate_stream", json=body) as stream:
        yield stream
        yield from stream.iter_lines()


def last_event(lines: list[str]) -> dict[str, Any]:
    event: dict[str, Any] = json.loads([line for line in lines if line.startswith("data:")][-1].removeprefix("data:"))
    return event


def chars_generated(client: httpx.Client, model: str) -> int:
    """charlm_chars_generated_total of `model` (every version of it), counted each engine step."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'charlm_chars_generated_total{{model="{model}"}}'):
            return int(float(line.split()[-1]))
    return 0


def test_a_replaced_model_finishes_running_streams_on_the_old_weights(own_models, tiny_models):
    """Over a real socket (the in-process transport would buffer the stream). The stream is endless,
    so it certainly runs when the new version is swapped in, and it is read until well past the
    characters generated before the swap: those after it must still be the old weights' (greedy
    decoding of the old model, computed here)."""
    old = load_model(own_models / "tiny-gpt")
    body = {"inputs": "the ", "model": "tiny-gpt", "parameters": {"max_new_tokens": LONG}}  # greedy
    with live_server(own_models, models_poll_s=0, admin_key="admin-secret", max_new_tokens=LONG) as (url, _), \
            httpx.Client(base_url=url, timeout=60) as client:
        old_version = client.get("/health").json()["models"]["tiny-gpt"]["version"]
        stream = stream_lines(client, body)
        assert cast(httpx.Response, next(stream)).headers["x-charlm-model-version"] == old_version
        lines = [cast(str, next(stream))]
        publish_model(tiny_models / "tiny-lstm", own_models / "tiny-gpt")
        assert client.post("/admin/reload", headers=ADMIN).json()["replaced"] == ["tiny-gpt"]
        assert client.get("/admin/models", headers=ADMIN).json()["retiring"] == 1  # the stream's engine runs on
        wanted = chars_generated(client, "tiny-gpt") + 200  # more than the stream had before the swap
        received: list[str] = []
        for line in itertools.chain(lines, cast(Iterator[str], stream)):  # endless: read lazily
            if line.startswith("data:"):
                received.append(json.loads(line.removeprefix("data:"))["token"]["text"])
                if len(received) == wanted:
                    break
        stream.close()  # leaving cancels the endless sequence
        response = client.post("/generate", json={**body, "parameters": {"max_new_tokens": 30}})
        new_version = response.headers["x-charlm-model-version"]
        assert new_version != old_version
        # the old version's engine is let go once its stream has ended
        assert wait_until(lambda: client.get("/admin/models", headers=ADMIN).json()["retiring"] == 0)
    greedy = SamplingParams(temperature=0)
    expected = "".join(c.char for c in generate_locally(old.model, old.vocab, "the ", wanted, greedy))
    assert "".join(received) == expected


def test_a_removed_model_finishes_its_stream_and_takes_no_new_requests(own_models, tiny_models):
    """Over a real socket (the in-process transport would buffer the stream)."""
    publish_model(tiny_models / "tiny-lstm", own_models / "doomed")
    body = {"inputs": "the ", "model": "doomed", "parameters": {"max_new_tokens": 2000, "seed": 3}}
    with live_server(own_models, models_poll_s=0, admin_key="admin-secret") as (url, _), \
            httpx.Client(base_url=url, timeout=60) as client:
        expected = client.post("/generate", json=body).json()["generated_text"]
        stream = stream_lines(client, body)
        next(stream)
        first = cast(str, next(stream))
        assert client.get("/health").json()["models"]["doomed"]["active"] == 1
        shutil.rmtree(own_models / "doomed")
        assert client.post("/admin/reload", headers=ADMIN).json()["removed"] == ["doomed"]
        assert client.post("/generate", json=body).status_code == 404
        assert last_event([first, *cast(Iterator[str], stream)])["generated_text"] == expected
        assert "doomed" not in client.get("/health").json()["models"]
        assert [card["id"] for card in client.get("/v1/models").json()["data"]] == ["tiny-gpt"]


async def test_a_half_copied_directory_is_never_served_and_is_retried_when_it_changes(own_models, tiny_models):
    source, half = tiny_models / "tiny-lstm", own_models / "half"
    weights = (source / WEIGHTS_FILE).read_bytes()
    async with app_on(own_models) as (client, app):
        half.mkdir()  # a copy by hand, seen midway
        for name in ("config.json", "vocab.json"):
            shutil.copy(source / name, half / name)
        (half / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
        failed = (await reload(client))["failed"]
        assert isinstance(failed, dict) and "truncated or corrupt" in failed["half"]
        assert (await health(client))["half"]["status"] == "failed"
        assert "truncated" in str((await client.get("/info")).json()["models"]["half"]["error"])
        refused = await generate(client, "half")  # it exists, and cannot serve: 503 saying why
        assert refused.status_code == 503 and "truncated or corrupt" in refused.json()["error"]
        assert "charlm_model_load_failures_total{model=\"half\"} 1.0" in (await client.get("/metrics")).text
        assert (await service_state(app).models.watcher.reload()).failed == {}  # a poll: unchanged, not tried again
        assert "half" in dict((await reload(client))["failed"])  # type: ignore[call-overload]  # explicit: tried
        (half / WEIGHTS_FILE).write_bytes(weights)  # the copy completes
        assert (await reload(client))["loaded"] == ["half"]
        assert (await generate(client, "half")).status_code == 200


async def test_a_broken_replacement_leaves_the_served_version_serving(own_models):
    weights_path = own_models / "tiny-gpt" / WEIGHTS_FILE
    weights = weights_path.read_bytes()
    async with app_on(own_models) as (client, _):
        version = (await health(client))["tiny-gpt"]["version"]
        before = (await generate(client, "tiny-gpt")).json()
        weights_path.write_bytes(weights[:100])
        assert "tiny-gpt" in dict((await reload(client))["failed"])  # type: ignore[call-overload]
        status = (await health(client))["tiny-gpt"]
        assert status["status"] == "ready" and status["version"] == version
        assert "truncated" in str(status["reload_error"])
        assert (await generate(client, "tiny-gpt")).json() == before
        weights_path.write_bytes(weights)  # the same weights again: nothing to load
        assert await reload(client) == {"loaded": [], "replaced": [], "removed": [], "failed": {}}
        assert "reload_error" not in (await health(client))["tiny-gpt"]


async def test_an_unloaded_model_stays_unloaded_until_an_explicit_reload(own_models, tiny_models):
    publish_model(tiny_models / "tiny-lstm", own_models / "spare")
    async with app_on(own_models) as (client, app):
        response = await client.post("/admin/models/spare/unload", headers=ADMIN)
        assert response.status_code == 200
        assert {m["name"]: m["status"] for m in response.json()["models"]} == {"spare": "unloaded",
                                                                             "tiny-gpt": "ready"}
        unloaded = await generate(client, "spare")
        assert unloaded.status_code == 503 and "was unloaded by an administrator" in unloaded.json()["error"]
        assert (await client.post("/admin/models/spare/unload", headers=ADMIN)).status_code == 409
        assert (await client.post("/admin/models/nothing/unload", headers=ADMIN)).status_code == 404
        assert (await service_state(app).models.watcher.reload()).loaded == []  # what a poll does: nothing
        assert (await reload(client))["loaded"] == ["spare"]
        assert (await generate(client, "spare")).status_code == 200


async def test_admin_lists_every_directory_with_version_load_time_and_memory(own_models):
    async with app_on(own_models) as (client, _):
        models = (await client.get("/admin/models", headers=ADMIN)).json()["models"]
        assert [m["name"] for m in models] == ["tiny-gpt"]
        model = models[0]
        assert model["status"] == "ready" and len(model["version"]) == 16
        assert model["loaded_at"] > 0 and model["load_seconds"] > 0
        assert model["weights_bytes"] > 0 and model["decode_state_bytes"] > 0


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer api-secret"}, 401),  # the API key does not open administration
    ({"Authorization": "Bearer wrong"}, 401),
    (ADMIN, 200),
])
async def test_the_admin_key_is_enforced(own_models, headers, status):
    async with app_on(own_models, api_key="api-secret") as (client, _):
        for method, path in (("GET", "/admin/models"), ("POST", "/admin/reload")):
            response = await client.request(method, path, headers=headers)
            assert response.status_code == status, response.text
            if status == 401:
                assert "admin key" in response.json()["error"]


async def test_administration_is_off_without_an_admin_key(own_models):
    async with app_on(own_models, admin_key=None) as (client, _):
        response = await client.post("/admin/reload", headers=ADMIN)
        assert response.status_code == 403
        assert "CHARLM_ADMIN_KEY" in response.json()["error"]


async def test_a_model_card_is_served_with_the_model(own_models):
    async with app_on(own_models) as (client, _):
        card = (await client.get("/v1/models/tiny-gpt")).json()
        assert card["id"] == "tiny-gpt" and card["card"] == (own_models / "tiny-gpt" / "README.md").read_text()
        missing = await client.get("/v1/models/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_a_rewritten_config_with_the_same_weights_loads_nothing(own_models):
    config = own_models / "tiny-gpt" / "config.json"
    async with app_on(own_models) as (client, app):
        engine = engine_of(app, "tiny-gpt")
        config.write_text(config.read_text() + "\n")  # as a training run's final summary does
        assert await reload(client) == {"loaded": [], "replaced": [], "removed": [], "failed": {}}
        assert engine_of(app, "tiny-gpt") is engine


async def test_a_dead_engine_process_is_restarted_and_served_again_without_an_operator(own_models):
    async with app_on(own_models, engine_process=True) as (client, app):
        engine = engine_handle_of(app, "tiny-gpt")
        before = (await generate(client, "tiny-gpt")).json()
        os.kill(engine.pid, signal.SIGKILL)  # the engine process dies
        await eventually(lambda: engine.failure is not None, "the server to notice its engine died")
        assert "exited unexpectedly (killed by SIGKILL)" in str(engine.failure)
        # A request made now waits for the new engine (within CHARLM_LOAD_WAIT_S) rather than failing.
        assert (await generate(client, "tiny-gpt")).json() == before
        status = (await health(client))["tiny-gpt"]
        assert status["status"] == "ready" and engine_handle_of(app, "tiny-gpt").pid != engine.pid
