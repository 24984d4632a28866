"""Every registered family is served alike, by registration alone: a stream with the alternatives
the playground shows, the sampling controls with batch invariance kept, and a model of the family
published while the server runs (live models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from httpx_sse import aconnect_sse

from tests.service.helpers import ARCHITECTURES, publish_model, running_app, settings_for

pytestmark = pytest.mark.anyio
CONTROLS = {"temperature": 0.9, "top_k": 8, "top_p": 0.9, "repetition_penalty": 1.3, "min_p": 0.1,
            "typical_p": 0.9, "frequency_penalty": 0.5}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
async def test_the_stream_the_playground_reads_carries_each_characters_alternatives(client, architecture):
    body = {"inputs": "the king", "model": f"tiny-{architecture}",
            "parameters": {"max_new_tokens": 25, "seed": 4, "do_sample": True, "top_n_tokens": 3, "details": True}}
    events = []
    async with aconnect_sse(client, "POST", "/generate_stream", json=body) as source:
        assert source.response.status_code == 200
        events = [json.loads(event.data) async for event in source.aiter_sse()]
    assert len(events) == 25 and events[-1]["details"]["finish_reason"] == "length"
    for event in events:
        top = event["top_tokens"]
        assert len(top) == 3 and top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
    whole = await client.post("/generate", json=body)
    assert whole.json()["generated_text"] == "".join(e["token"]["text"] for e in events)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
async def test_every_sampling_control_keeps_a_seeded_request_the_same_alone_and_in_a_batch(client, architecture):
    parameters = {"max_new_tokens": 30, "seed": 11, "do_sample": True, **CONTROLS}
    body = {"model": f"tiny-{architecture}", "parameters": parameters}
    alone = (await client.post("/generate", json={**body, "inputs": "war"})).json()
    batch = (await client.post("/generate", json={**body, "inputs": ["the king", "war", "my lord"]})).json()
    assert batch[1]["generated_text"] == alone["generated_text"]
    assert len(alone["generated_text"]) == 30


@pytest.mark.parametrize("architecture", ARCHITECTURES)
async def test_a_model_of_each_family_published_while_serving_is_served(own_models: Path, tiny_models: Path,
                                                                        architecture):
    settings = settings_for(own_models, models_poll_s=0, admin_key="admin-secret")
    async with running_app(settings) as (client, _):
        publish_model(tiny_models / f"tiny-{architecture}", own_models / "fresh")
        reloaded = await client.post("/admin/reload", headers={"Authorization": "Bearer admin-secret"})
        assert reloaded.json()["loaded"] == ["fresh"]
        body = {"inputs": "the ", "model": "fresh", "parameters": {"max_new_tokens": 20, "seed": 2}}
        assert len((await client.post("/generate", json=body)).json()["generated_text"]) == 20
        card = (await client.get("/v1/models/fresh")).json()
        assert card["architecture"] == architecture
