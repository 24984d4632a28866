"""Every bad request gets its protocol's error shape and the right status, never a 500."""

import asyncio
import logging
import re
import shutil

import httpx
import pytest

from service.frontend.app import create_app
from tests.service.helpers import engine_of, eventually, running_app, service_state, settings_for

pytestmark = pytest.mark.anyio


def tgi(prompt="the king", **parameters):
    return {"inputs": prompt, "parameters": {"max_new_tokens": 5, **parameters}}


def assert_tgi_error(response, status, *needles):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    for needle in needles:
        assert needle in body["error"], body["error"]


def assert_openai_error(response, status, *needles):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error


@pytest.mark.parametrize(
    "body, needles",
    [
        ({"inputs": "x", "parameters": {"temperature": -1}}, ["parameters.temperature"]),
        ({"inputs": "x", "parameters": {"top_p": 0}}, ["parameters.top_p"]),
        ({"inputs": "x", "parameters": {"max_new_tokens": "many"}}, ["parameters.max_new_tokens"]),
        ({"inputs": "x", "parameters": {"max_new_tokens": 10**9}}, ["exceeds the limit"]),
        ({"inputs": "x", "parameters": {"repetition_penalty": 0}}, ["parameters.repetition_penalty"]),
        ({"inputs": "x", "parameters": {"frequency_penalty": 3.0}}, ["parameters.frequency_penalty"]),
        ({"inputs": "x", "parameters": {"typical_p": 1.5}}, ["parameters.typical_p"]),
        ({"inputs": "x", "parameters": {"min_p": -0.1}}, ["parameters.min_p"]),
        ({"inputs": "x", "parameters": {"best_of": 2}}, ["best_of > 1 needs sampling"]),
        ({"inputs": "x", "parameters": {"watermark": True}}, ["watermark is not supported"]),
        ({"inputs": "x", "parameters": {"adapter_id": "lora-1"}}, ["adapter_id is not supported", "use null"]),
        ({"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "(king"}}}, ["does not compile"]),
        ({"inputs": "x", "parameters": {"stop": [""]}}, ["must not be empty"]),
        ({"inputs": "x", "colour": "blue"}, ["unknown field 'colour'"]),
        ({"inputs": ["a"] * 40}, ["the limit is 16"]),
        ({"inputs": []}, ["no prompt"]),
        ({"parameters": {}}, ["inputs: Field required"]),
    ],
)
async def test_tgi_validation_errors(client, body, needles):
    assert_tgi_error(await client.post("/generate", json=body), 422, *needles)


@pytest.mark.parametrize(
    "body, needles",
    [
        ({"prompt": "x", "temperature": -0.5}, ["temperature"]),
        ({"prompt": "x", "n": 0}, ["n:"]),
        ({"prompt": "x", "n": 9, "max_tokens": 2} | {"prompt": ["a", "b"]}, ["the limit is 16"]),
        ({"prompt": "x", "logprobs": 9}, ["logprobs"]),
        ({"prompt": "x", "presence_penalty": 2.5}, ["presence_penalty"]),
        ({"prompt": "x", "frequency_penalty": -3}, ["frequency_penalty"]),
        ({"prompt": "x", "logit_bias": {"a": 1.0}}, ["logit_bias keys are character ids", "'a'"]),
        ({"prompt": "x", "logit_bias": {"3": 150.0}}, ["logit_bias['3'] is 150.0"]),
        ({"prompt": "x", "n": 3, "best_of": 2}, ["best_of (2) must be at least n (3)"]),
        ({"prompt": "x", "best_of": 2, "stream": True}, ["best_of cannot be used with stream"]),
        ({"prompt": "x", "suffix": "end"}, ["suffix is not supported"]),
        ({"prompt": [[1, 2], "x"]}, ["prompt"]),  # texts, or lists of character ids, not both
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}, ["at most 8 stop strings"]),
        ({"prompt": "x", "stream_options": {"include_usage": True, "x": 1}}, ["unknown field"]),
    ],
)
async def test_openai_validation_errors(client, body, needles):
    error = assert_openai_error(await client.post("/v1/completions", json=body), 400, *needles)
    assert error["type"] == "invalid_request_error"


async def test_unknown_characters_are_listed_in_a_422(client):
    assert_tgi_error(await client.post("/generate", json=tgi("the ☃ king ☃")), 422, "'☃' (U+2603) at 4, 11")
    response = await client.post("/v1/completions", json={"prompt": "€"})
    assert_openai_error(response, 422, "'€' (U+20AC) at 0")


async def test_unknown_model_is_a_404_in_both_shapes(client):
    response = await client.post("/generate", json={**tgi(), "model": "gpt-5"})
    assert_tgi_error(response, 404, "model 'gpt-5' is not served", "tiny-gpt")
    error = assert_openai_error(await client.post("/v1/completions", json={"model": "../etc", "prompt": "a"}),
                                404, "'../etc'")
    assert error["code"] == "model_not_found"


async def test_invalid_json_and_wrong_content_type(client):
    json_type = {"content-type": "application/json"}
    response = await client.post("/generate", content=b'{"inputs": ', headers=json_type)
    assert_tgi_error(response, 422, "invalid JSON")
    response = await client.post("/v1/completions", content=b"prompt=hi",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert_openai_error(response, 400)
    assert_tgi_error(await client.post("/generate"), 422)


async def test_body_over_the_limit_is_a_413(serve):
    async with serve(max_body_bytes=2048) as (client, _):
        response = await client.post("/generate", json=tgi("a" * 5000))
        assert_tgi_error(response, 413, "exceeds the limit of 2048 bytes")
        response = await client.post("/v1/completions", json={"prompt": "a" * 5000})
        assert_openai_error(response, 413)


async def test_prompt_over_the_limit_is_refused(serve):
    async with serve(max_prompt_chars=10) as (client, _):
        response = await client.post("/generate", json=tgi("the king and the queen"))
        assert_tgi_error(response, 422, "22 characters exceeds the limit of 10")


async def test_unknown_route_and_method(client):
    assert_tgi_error(await client.get("/nope"), 404)
    assert_openai_error(await client.get("/v1/nope"), 404)
    assert_tgi_error(await client.get("/generate"), 405)


async def test_full_queue_answers_429_with_retry_after(serve):
    async with serve(max_batch_size=1, max_queued=1) as (client, app):
        long = tgi(max_new_tokens=400)
        running = asyncio.create_task(client.post("/generate", json=long))
        queued = asyncio.create_task(client.post("/generate", json=long))
        engine = engine_of(app, "tiny-gpt")
        await eventually(lambda: engine.active + engine.queued == 2, "one request running and one queued")
        response = await client.post("/generate", json=tgi())
        assert_tgi_error(response, 429, "too many requests")
        assert response.headers["retry-after"] == "1"
        response = await client.post("/v1/completions", json={"prompt": "the"})
        assert assert_openai_error(response, 429)["type"] == "rate_limit_error"
        assert (await running).status_code == 200 and (await queued).status_code == 200


async def test_timeout_has_its_own_finish_reason(serve):
    async with serve(request_timeout_s=0.05) as (client, _):
        body = tgi(max_new_tokens=4000, details=True)
        answer = (await client.post("/generate", json=body)).json()
        assert answer["details"]["finish_reason"] == "timeout"
        assert answer["details"]["generated_tokens"] < 4000


async def test_api_key_guards_generation_and_model_listing(serve):
    async with serve(api_key="s3cret") as (client, _):
        refused = await client.post("/generate", json=tgi())
        assert_tgi_error(refused, 401, "API key")
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = {"authorization": "Bearer nope"}
        assert_tgi_error(await client.post("/generate", json=tgi(), headers=wrong), 401)
        refused = await client.get("/v1/models")
        assert assert_openai_error(refused, 401)["type"] == "authentication_error"
        assert refused.headers["www-authenticate"] == "Bearer"
        right = {"authorization": "Bearer s3cret"}
        assert (await client.post("/generate", json=tgi(), headers=right)).status_code == 200
        assert (await client.get("/v1/models", headers=right)).status_code == 200
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_a_broken_model_directory_is_reported_and_the_others_served(tiny_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-gpt", models / "good")
    shutil.copytree(tiny_models / "tiny-lstm", models / "broken")
    weights = models / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    async with running_app(settings_for(models, default_model="good")) as (client, _):
        health = (await client.get("/health")).json()
        assert health["models"]["good"]["status"] == "ready"
        assert health["models"]["broken"]["status"] == "failed"
        assert "model.safetensors: truncated or corrupt" in health["models"]["broken"]["error"]
        assert_tgi_error(await client.post("/generate", json={**tgi(), "model": "broken"}), 503,
                         "model 'broken' failed: ")
        assert (await client.post("/generate", json=tgi())).status_code == 200


async def test_no_loadable_model_fails_startup_with_the_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no model could be loaded"):
        async with running_app(settings_for(tmp_path)):
            pass


async def test_draining_turns_health_and_new_requests_to_503(serve):
    async with serve() as (client, app):
        service_state(app).draining = True
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        assert health.headers["retry-after"] == "1"
        refused = await client.post("/generate", json=tgi())
        assert_tgi_error(refused, 503, "shutting down")
        assert refused.headers["retry-after"] == "1"
        refused = await client.post("/v1/completions", json={"prompt": "a"})
        assert_openai_error(refused, 503)
        assert refused.headers["retry-after"] == "1"


async def test_while_starting_health_and_generation_answer_503_with_retry_after(tiny_models):
    """Before the lifespan has loaded the models (the app asked before its startup ran)."""
    app = create_app(settings_for(tiny_models))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://charlm.test") as client:
        health = await client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "starting"
        assert health.headers["retry-after"] == "1"
        refused = await client.post("/generate", json=tgi())
        assert_tgi_error(refused, 503, "starting")
        assert refused.headers["retry-after"] == "1"
        assert_openai_error(await client.post("/v1/completions", json={"prompt": "a"}), 503, "starting")


async def test_a_chunked_body_over_the_limit_is_a_413(serve):
    async def chunks():
        for _ in range(10):
            yield b'{"inputs": "' + b"a" * 500

    async with serve(max_body_bytes=2048) as (client, _):
        response = await client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert_tgi_error(response, 413, "exceeds the limit of 2048 bytes")


async def test_huge_numbers_are_refused_before_any_work(client):
    response = await client.post("/generate", json=tgi(top_k=10**30))
    assert_tgi_error(response, 422, "parameters.top_k")
    response = await client.post("/v1/completions", json={"prompt": "a", "n": 10**12})
    assert_openai_error(response, 400, "the limit is 16")



async def test_each_generation_request_logs_one_line_with_its_id_model_characters_and_timings(client, caplog):
    with caplog.at_level(logging.INFO, logger="service"):
        response = await client.post("/generate", json=tgi(details=True), headers={"x-request-id": "trace-7"})
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if "trace-7" in r.getMessage()]
    assert len(lines) == 1, lines
    assert re.fullmatch(r"request trace-7 /generate model=tiny-gpt sequences=1 chars=5 finish=length "
                        r"first_char_ms=[\d.]+ total_ms=[\d.]+", lines[0]), lines[0]
