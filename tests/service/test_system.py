"""Health, info and metrics."""

import pytest

from tests.service.helpers import TINY_NAMES

pytestmark = pytest.mark.anyio


async def test_health_reports_each_model(client):
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert {name: m["status"] for name, m in body["models"].items()} == dict.fromkeys(TINY_NAMES, "ready")


async def test_info_reports_version_device_limits_and_models(client):
    body = (await client.get("/info")).json()
    assert body["device"] == "cpu" and body["dtype"] == "float32" and body["default_model"] == "tiny-gpt"
    assert body["limits"]["max_batch_size"] == 16 and body["limits"]["max_new_tokens"] == 4096
    assert set(body["models"]) == TINY_NAMES
    gpt = body["models"]["tiny-gpt"]  # how it decodes, and why: SDPA and no compilation on a CPU
    assert gpt["decode_attention"] == "sdpa" and gpt["decode_attention_reason"] == "on cpu"
    assert all(model["compiled"] is False for model in body["models"].values())


async def test_metrics_count_requests_characters_and_latency(client):
    await client.post("/generate", json={"inputs": "the", "parameters": {"max_new_tokens": 7}})
    await client.post("/generate", json={"inputs": "the", "model": "nope"})
    text = (await client.get("/metrics")).text
    assert 'charlm_requests_total{route="/generate",status="200"} 1.0' in text
    assert 'charlm_requests_total{route="/generate",status="404"} 1.0' in text
    assert 'charlm_chars_generated_total{model="tiny-gpt"} 7.0' in text
    assert 'charlm_time_to_first_char_seconds_count{model="tiny-gpt"} 1.0' in text
    assert 'charlm_inter_char_seconds_count{model="tiny-gpt"} 6.0' in text
    assert 'charlm_batch_size{model="tiny-gpt"} 0.0' in text and "charlm_queue_depth" in text


async def test_request_id_is_echoed(client):
    response = await client.get("/health", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    odd = await client.get("/health", headers={"x-request-id": "bad id\twith spaces"})
    assert odd.headers["x-request-id"] != "bad id\twith spaces" and len(odd.headers["x-request-id"]) == 32


async def test_cors_allows_listed_origins_only(serve):
    async with serve(cors_origins=["https://app.example"]) as (client, _):
        preflight = {"origin": "https://app.example", "access-control-request-method": "POST",
                     "access-control-request-headers": "authorization"}
        allowed = await client.options("/generate", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = await client.options("/generate", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
