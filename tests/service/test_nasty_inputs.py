"""Hostile and broken requests, sent as raw bytes: each gets a clear 4xx in its protocol's shape."""

import json

import pytest

from tests.service.test_errors import assert_openai_error, assert_tgi_error

pytestmark = pytest.mark.anyio
JSON = {"content-type": "application/json"}
DEEP = 100_000  # levels of nesting, far past what the JSON decoder recurses through


def deep_list() -> bytes:
    return b"[" * DEEP + b"]" * DEEP


# (raw body, expected message): {p} stands for the protocol's prompt field; sampling fields go
# between {x} and {/x}, which are TGI's "parameters" object and nothing for OpenAI.
CASES = {
    "a lone surrogate": (b'{"{p}": "the \\ud800 king"}', "(U+D800) at 4"),
    "NaN": (b'{"{p}": "the", {x}"temperature": NaN{/x}}', "temperature: Input should be a finite number"),
    "Infinity": (b'{"{p}": "the", {x}"top_p": Infinity{/x}}', "top_p: Input should be less than or equal to 1"),
    "a negative seed": (b'{"{p}": "the", {x}"seed": -1{/x}}', "seed: Input should be greater than or equal to 0"),
    "a float count": (b'{"{p}": "the", {x}"top_k": 2.5{/x}}', "top_k: Input should be a valid integer"),
    "a string number": (b'{"{p}": "the", {x}"top_k": "5"{/x}}', "top_k: Input should be a valid integer"),
    "a boolean as a number": (b'{"{p}": "the", {x}"temperature": true{/x}}', "temperature: Input should be a"),
    "a huge exponent": (b'{"{p}": "the", {x}"top_k": 1e400{/x}}', "top_k: Input should be a valid integer"),
    "a number with 5000 digits": (b'{"{p}": "the", {x}"top_k": ' + b"9" * 5000 + b"{/x}}", "too many digits"),
    "a prompt of the wrong type": (b'{"{p}": 5}', "Input should be a valid string"),
    "invalid UTF-8": (b'{"{p}": "the \xff\xfe king"}', "not valid UTF-8 (byte"),
    "deeply nested JSON": (b'{"{p}": ' + deep_list() + b"}", "nested too deeply"),
    "an empty body": (b"", "the request body is empty"),
    "JSON null": (b"null", "valid dictionary"),
    "a JSON array": (b"[1, 2]", "valid dictionary"),
    "truncated JSON": (b'{"{p}": "the', "invalid JSON"),
    "an unknown model": (b'{"{p}": "the", "model": "../../etc/passwd"}', "'../../etc/passwd' is not served"),
}


def tgi_body(raw: bytes) -> bytes:
    return raw.replace(b"{x}", b'"parameters": {').replace(b"{/x}", b"}").replace(b"{p}", b"inputs")


def openai_body(raw: bytes) -> bytes:
    return raw.replace(b"{x}", b"").replace(b"{/x}", b"").replace(b"{p}", b"prompt")


@pytest.mark.parametrize("case", sorted(CASES))
async def test_tgi_refuses_with_a_422_naming_the_problem(client, case):
    raw, needle = CASES[case]
    response = await client.post("/generate", content=tgi_body(raw), headers=JSON)
    status = 404 if case == "an unknown model" else 422
    assert_tgi_error(response, status, needle)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_openai_refuses_with_a_4xx_naming_the_problem(client, case):
    raw, needle = CASES[case]
    response = await client.post("/v1/completions", content=openai_body(raw), headers=JSON)
    status = {"an unknown model": 404, "a lone surrogate": 422}.get(case, 400)
    assert_openai_error(response, status, needle)


async def test_a_body_that_is_not_json_is_refused_by_content_type(client):
    for headers in ({"content-type": "text/plain"}, {}):
        response = await client.post("/generate", content=b'{"inputs": "the"}', headers=headers)
        assert_tgi_error(response, 422, "Content-Type: application/json")
    for content_type in ("Application/JSON; charset=utf-8", "application/vnd.api+json"):  # JSON, as FastAPI reads it
        body = b'{"inputs": "the", "parameters": {"top_k": -1}}'
        response = await client.post("/generate", content=body, headers={"content-type": content_type})
        assert_tgi_error(response, 422, "parameters.top_k: Input should be greater than or equal to 0")


async def test_limits_on_prompt_length_tokens_and_sequences(serve):
    async with serve(max_prompt_chars=50, max_new_tokens=100, max_n=4) as (client, _):
        huge = await client.post("/generate", json={"inputs": "the " * 1000})
        assert_tgi_error(huge, 422, "4000 characters exceeds the limit of 50")
        many = await client.post("/generate", json={"inputs": "a", "parameters": {"max_new_tokens": 10**6}})
        assert_tgi_error(many, 422, "1000000 exceeds the limit of 100")
        listed = await client.post("/generate", json={"inputs": ["the"] * 5})
        assert_tgi_error(listed, 422, "5 sequences requested; the limit is 4")
        choices = await client.post("/v1/completions", json={"prompt": ["the", "a"], "n": 3})
        assert_openai_error(choices, 400, "6 sequences requested (prompts x n); the limit is 4")
        tokens = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 101})
        assert_openai_error(tokens, 400, "max_tokens 101 exceeds the limit of 100")


async def test_a_huge_body_is_refused_before_it_is_read(serve):
    async with serve(max_body_bytes=4096) as (client, _):
        body = json.dumps({"inputs": "the " * 2_000_000}).encode()  # 8 MB
        assert_tgi_error(await client.post("/generate", content=body, headers=JSON), 413, "4096 bytes")
