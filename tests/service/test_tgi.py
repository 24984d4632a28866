"""TGI routes: response shapes, batching, determinism, streams, stop strings."""

import asyncio
import json

import pytest
from httpx_sse import aconnect_sse

from charlm.checkpoint import load_model
from tests.service.helpers import ARCHITECTURES, engine_of, eventually

pytestmark = pytest.mark.anyio


def generate_body(prompt="the king", model="tiny-gpt", **parameters):
    return {"inputs": prompt, "model": model, "parameters": {"max_new_tokens": 30, **parameters}}


async def test_generate_returns_text_and_details(client):
    response = await client.post("/generate", json=generate_body(details=True, seed=3, do_sample=True))
    assert response.status_code == 200
    body = response.json()
    details = body["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 30
    assert details["seed"] == 3 and details["prefill"] == []
    assert "".join(t["text"] for t in details["tokens"]) == body["generated_text"]
    assert all(t["logprob"] <= 0 and t["special"] is False for t in details["tokens"])
    assert response.headers["x-request-id"]
    version = (await client.get("/health")).json()["models"]["tiny-gpt"]["version"]
    assert response.headers["x-charlm-model"] == "tiny-gpt" and response.headers["x-charlm-model-version"] == version
    other = await client.post("/v1/completions", json={"model": "tiny-lstm", "prompt": "the", "max_tokens": 2})
    assert other.headers["x-charlm-model"] == "tiny-lstm"


async def test_generate_without_details_and_with_full_text(client):
    body = (await client.post("/generate", json=generate_body(return_full_text=True))).json()
    assert body["details"] is None
    assert body["generated_text"].startswith("the king")


async def test_top_n_tokens_lists_the_most_likely_characters(client):
    body = (await client.post("/generate", json=generate_body(details=True, top_n_tokens=3))).json()
    for token, top in zip(body["details"]["tokens"], body["details"]["top_tokens"], strict=True):
        assert len(top) == 3
        assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
        assert token["id"] == top[0]["id"]  # greedy picks the most likely


@pytest.mark.parametrize("architecture", ARCHITECTURES)
async def test_seeded_text_is_the_same_alone_or_in_a_batch_of_16(serve, architecture):
    model = f"tiny-{architecture}"
    body = generate_body(model=model, seed=1234, temperature=1.0, max_new_tokens=40)
    async with serve() as (client, app):
        alone = (await client.post("/generate", json=body)).json()["generated_text"]
        others = [generate_body(prompt=p, model=model, seed=s, temperature=1.0, max_new_tokens=60)
                  for s, p in zip(range(15), ["the", "my lord", "", "war"] * 4, strict=False)]
        bodies = [*others[:7], body, *others[7:]]
        responses = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
        batched = responses[7].json()["generated_text"]
        assert engine_of(app, model).max_batch_seen > 1  # they really shared a batch
    assert batched == alone


async def test_greedy_is_deterministic_whatever_the_seed(client):
    first = (await client.post("/generate", json=generate_body(seed=1))).json()["generated_text"]
    second = (await client.post("/generate", json=generate_body(seed=99))).json()["generated_text"]
    assert first == second


async def test_list_inputs_come_back_in_order_and_match_single_requests(client):
    prompts = ["the king", "my lord", "war"]
    body = {"inputs": prompts, "model": "tiny-lstm", "parameters": {"max_new_tokens": 20, "seed": 5,
                                                                     "do_sample": True}}
    answers = (await client.post("/generate", json=body)).json()
    assert isinstance(answers, list) and len(answers) == 3
    for prompt, answer in zip(prompts, answers, strict=True):
        single = generate_body(prompt, "tiny-lstm", max_new_tokens=20, seed=5, do_sample=True)
        alone = (await client.post("/generate", json=single)).json()
        assert answer["generated_text"] == alone["generated_text"]


async def stream_events(client, path, body):
    events = []
    async with aconnect_sse(client, "POST", path, json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["cache-control"] == "no-cache"
        assert source.response.headers["x-accel-buffering"] == "no"
        async for event in source.aiter_sse():
            events.append(json.loads(event.data))
    return events


def streamed_text(events):
    return "".join(e["token"]["text"] for e in events if not e["token"]["special"])


async def test_generate_stream_sends_one_event_per_character_the_last_with_details(client):
    events = await stream_events(client, "/generate_stream", generate_body(seed=2, do_sample=True))
    assert [e["index"] for e in events] == list(range(1, 31))
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["token"]["special"] is False
    assert last["generated_text"] == streamed_text(events)
    assert last["details"]["finish_reason"] == "length" and last["details"]["seed"] == 2
    assert last["details"]["input_length"] == len("the king")


async def test_stream_and_non_stream_agree(client):
    body = generate_body(seed=11, do_sample=True)
    events = await stream_events(client, "/generate_stream", body)
    text = (await client.post("/generate", json=body)).json()["generated_text"]
    assert events[-1]["generated_text"] == text


async def test_base_route_answers_a_list_or_a_stream(client):
    body = generate_body(seed=4, do_sample=True)
    listed = (await client.post("/", json=body)).json()
    assert isinstance(listed, list) and len(listed) == 1
    events = await stream_events(client, "/", {**body, "stream": True})
    assert events[-1]["generated_text"] == listed[0]["generated_text"]


async def greedy_text(client, n=60, model="tiny-gpt", prompt="the king"):
    body = generate_body(prompt, model, max_new_tokens=n)
    return (await client.post("/generate", json=body)).json()["generated_text"]


async def test_stop_string_spanning_several_steps_ends_generation_and_is_excluded(client):
    text = await greedy_text(client)
    stop = text[10:13]  # three characters: found across three steps
    cut = text.find(stop)
    body = generate_body(max_new_tokens=60, stop=[stop], details=True)
    answer = (await client.post("/generate", json=body)).json()
    assert answer["generated_text"] == text[:cut]
    assert answer["details"]["finish_reason"] == "stop_sequence"
    assert answer["details"]["generated_tokens"] == cut + len(stop)


async def test_streams_hold_back_only_what_could_still_become_a_stop(client):
    text = await greedy_text(client)
    stop = text[10:13]
    events = await stream_events(client, "/generate_stream", generate_body(max_new_tokens=60, stop=[stop]))
    assert streamed_text(events) == text[: text.find(stop)] == events[-1]["generated_text"]
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"
    # The step that completed the stop string drew no character to send: a special empty token ends it.
    assert events[-1]["token"]["special"] is True and events[-1]["token"]["text"] == ""
    assert all(not e["token"]["special"] for e in events[:-1])
    unmatched = generate_body(max_new_tokens=60, stop=[text[10:12] + "\x00"])  # a prefix that never completes
    events = await stream_events(client, "/generate_stream", unmatched)
    assert streamed_text(events) == text  # everything released in the end


async def test_empty_prompt_starts_from_the_start_character(client, tiny_models):
    """The same text as a prompt of the start character alone, and not as a prompt of any other."""
    vocab = load_model(tiny_models / "tiny-gpt").vocab
    start = vocab.chars[vocab.start_id]

    async def text(prompt):
        body = generate_body(prompt=prompt, details=True, seed=8, do_sample=True)
        response = await client.post("/generate", json=body)
        assert response.status_code == 200 and response.json()["details"]["generated_tokens"] == 30
        return response.json()["generated_text"]

    empty = await text("")
    assert empty == await text(start)
    others = [await text(other) for other in vocab.chars[:8] if other != start]
    assert empty not in others


async def test_truncate_keeps_the_end_of_the_prompt(client):
    cut = (await client.post("/generate", json=generate_body("the king", max_new_tokens=10,
                                                           truncate=8))).json()
    truncated = (await client.post("/generate", json=generate_body("war the king", max_new_tokens=10,
                                                                 truncate=8))).json()
    assert truncated == cut


async def test_a_waiting_stream_receives_keep_alive_comments(serve):
    async with serve(max_batch_size=1, sse_keepalive_s=0.02) as (client, app):
        running = asyncio.create_task(client.post("/generate", json=generate_body(max_new_tokens=1500)))
        engine = engine_of(app, "tiny-gpt")
        await eventually(lambda: engine.active == 1, "the long request to start")
        response = await client.post("/generate_stream", json=generate_body(max_new_tokens=5))
        await running
    assert response.status_code == 200
    assert ": keep-alive" in response.text.split("data:")[0]  # sent while it waited in the queue


async def test_with_a_stream_interval_each_character_is_still_its_own_event(serve):
    """TGI's clients parse one token per event: a larger interval batches the writes, not the events."""
    async with serve(stream_interval=4) as (client, _):
        body = generate_body(seed=2, do_sample=True)
        events = await stream_events(client, "/generate_stream", body)
        text = (await client.post("/generate", json=body)).json()["generated_text"]
    assert [e["index"] for e in events] == list(range(1, 31))
    assert events[-1]["generated_text"] == streamed_text(events) == text


@pytest.mark.parametrize("top_n_tokens", [None, 2])
async def test_streamed_tokens_are_the_details_tokens_whatever_the_writes_carry(serve, top_n_tokens):
    """Each character's id, text and log-probability in the stream equal /generate's details, the
    last ones too: an interval of 7 makes the final write carry several characters (30 = 4 x 7 + 2)."""
    async with serve(stream_interval=7) as (client, _):
        body = generate_body(seed=5, do_sample=True, details=True, top_n_tokens=top_n_tokens)
        events = await stream_events(client, "/generate_stream", body)
        details = (await client.post("/generate", json=body)).json()["details"]
    assert [e["index"] for e in events] == list(range(1, 31))
    assert [e["token"] for e in events] == details["tokens"]
    if top_n_tokens:
        assert [e["top_tokens"] for e in events] == details["top_tokens"]


async def test_a_stream_that_runs_out_of_time_ends_with_a_special_empty_token(serve):
    async with serve(request_timeout_s=0.3) as (client, _):
        events = await stream_events(client, "/generate_stream", generate_body(max_new_tokens=4000))
    last = events[-1]
    assert last["details"]["finish_reason"] == "timeout" and len(events) - 1 < 4000
    assert last["token"]["special"] is True and last["token"]["text"] == ""
    assert last["generated_text"] == streamed_text(events)


async def test_do_sample_without_a_temperature_samples_at_temperature_1(client):
    async def text(**parameters):
        return (await client.post("/generate", json=generate_body(seed=21, **parameters))).json()["generated_text"]

    sampled = await text(do_sample=True)
    assert sampled == await text(temperature=1.0)
    assert sampled != await text(temperature=0.5) and sampled != await text()  # neither colder nor greedy
