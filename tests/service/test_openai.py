"""OpenAI routes: completion and model-list shapes, n and prompt lists, echo, logprobs, streams."""

import json

import pytest
from httpx_sse import aconnect_sse

from tests.service.helpers import TINY_NAMES

pytestmark = pytest.mark.anyio


def completion(**fields):
    return {"model": "tiny-gpt", "prompt": "the king", "max_tokens": 12, **fields}


async def test_completion_shape_and_usage(client):
    response = await client.post("/v1/completions", json=completion(seed=1))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "tiny-gpt" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and len(choice["text"]) == 12
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}


async def test_n_choices_per_prompt_in_order_and_seeded(client):
    body = completion(prompt=["the king", "war"], n=2, seed=7, temperature=1.0)
    choices = (await client.post("/v1/completions", json=body)).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"] != choices[1]["text"]  # choice j draws with seed + j
    again = (await client.post("/v1/completions", json=body)).json()["choices"]
    assert [c["text"] for c in again] == [c["text"] for c in choices]
    single = (await client.post("/v1/completions", json=completion(prompt="war", seed=8, temperature=1.0)))
    assert single.json()["choices"][0]["text"] == choices[3]["text"]


async def test_echo_and_logprobs(client):
    body = completion(echo=True, logprobs=2, temperature=0)
    (choice,) = (await client.post("/v1/completions", json=body)).json()["choices"]
    assert choice["text"].startswith("the king")
    logprobs = choice["logprobs"]  # the echoed prompt's characters come first, scored (the first without)
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == list(range(len(choice["text"])))
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    generated = slice(len("the king"), None)
    for token, logprob, top in zip(logprobs["tokens"][generated], logprobs["token_logprobs"][generated],
                                   logprobs["top_logprobs"][generated], strict=True):
        assert len(top) == 2 and top[token] == pytest.approx(logprob)  # greedy takes the best


async def test_stop_string_is_excluded_and_reported(client):
    text = (await client.post("/v1/completions", json=completion(max_tokens=40, temperature=0))).json()
    text = text["choices"][0]["text"]
    stop = text[8:10]
    body = completion(max_tokens=40, temperature=0, stop=stop)
    (choice,) = (await client.post("/v1/completions", json=body)).json()["choices"]
    assert choice["text"] == text[: text.find(stop)] and choice["finish_reason"] == "stop"


async def test_stream_chunks_usage_and_done(client):
    body = completion(prompt=["the", "war"], n=1, seed=3, stream=True, stream_options={"include_usage": True})
    chunks, done = [], False
    async with aconnect_sse(client, "POST", "/v1/completions", json=body) as source:
        async for event in source.aiter_sse():
            if event.data == "[DONE]":
                done = True
            else:
                chunks.append(json.loads(event.data))
    assert done
    *deltas, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 24
    texts = {0: "", 1: ""}
    for chunk in deltas:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    finishes = [c["choices"][0] for c in deltas if c["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in finishes) == [0, 1]
    plain = completion(prompt=["the", "war"], seed=3)
    expected = (await client.post("/v1/completions", json=plain)).json()["choices"]
    assert [texts[0], texts[1]] == [c["text"] for c in expected]


async def test_model_list(client):
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == TINY_NAMES
    assert cards["tiny-gpt"]["architecture"] == "gpt" and cards["tiny-gpt"]["context_length"] == 16
    assert cards["tiny-lstm"]["context_length"] is None and cards["tiny-lstm"]["parameters"] > 0
    assert all(card["object"] == "model" and card["vocab_size"] > 10 for card in cards.values())


async def test_characters_ready_together_travel_in_one_chunk_with_their_logprobs(serve):
    """With a stream interval of 5 every chunk but the last carries five characters (or a multiple,
    when the stream fell behind), their logprobs lists in step, and the streamed text is the
    non-streamed one."""
    async with serve(stream_interval=5) as (client, _):
        body = completion(prompt="the king", max_tokens=23, seed=4, stream=True, logprobs=2)
        chunks = []
        async with aconnect_sse(client, "POST", "/v1/completions", json=body) as source:
            async for event in source.aiter_sse():
                if event.data != "[DONE]":
                    chunks.append(json.loads(event.data)["choices"][0])
        plain = {**body, "stream": False}
        expected = (await client.post("/v1/completions", json=plain)).json()["choices"][0]
    texts = [c["text"] for c in chunks if not c["finish_reason"]]
    assert all(len(t) % 5 == 0 for t in texts[:-1]) and len(texts[-1]) % 5 == 3
    assert "".join(texts) == expected["text"]
    logprobs = [c["logprobs"] for c in chunks if not c["finish_reason"]]
    assert [lp["tokens"] for lp in logprobs] == [list(t) for t in texts]
    assert [x for lp in logprobs for x in lp["token_logprobs"]] == expected["logprobs"]["token_logprobs"]
    assert [x for lp in logprobs for x in lp["text_offset"]] == list(range(23))
    assert all(len(lp["top_logprobs"]) == len(lp["tokens"]) for lp in logprobs)
