"""The sampling controls through both protocols: penalties, min-p, typical-p, logit bias, best-of."""

import math
from pathlib import Path

import pytest

from charlm.checkpoint import load_model

pytestmark = pytest.mark.anyio


def completion(**fields):
    return {"model": "tiny-gpt", "prompt": "the king", "max_tokens": 30, **fields}


def mean(values):
    return sum(values) / len(values)


async def test_a_bias_of_minus_100_on_the_newline_keeps_every_newline_out(client, tiny_models: Path):
    newline = load_model(tiny_models / "tiny-gpt").vocab.encode("\n").tolist()[0]
    plain = completion(prompt=["the king.", "war;"], max_tokens=120, n=4, seed=1)
    texts = [c["text"] for c in (await client.post("/v1/completions", json=plain)).json()["choices"]]
    assert any("\n" in t for t in texts)  # the tiny corpus is verse: without the bias, lines end
    biased = {**plain, "logit_bias": {str(newline): -100}}
    texts = [c["text"] for c in (await client.post("/v1/completions", json=biased)).json()["choices"]]
    assert not any("\n" in t for t in texts)


async def test_a_character_id_outside_the_vocabulary_is_a_422_naming_it(client):
    response = await client.post("/v1/completions", json=completion(logit_bias={"5": 1.0, "100000": 2.0}))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "logit_bias" and "[100000]" in error["message"] and "tiny-gpt" in error["message"]


async def test_openai_best_of_answers_the_candidates_with_the_highest_mean_logprob(client):
    """best_of 3, n 1: the answer is the best of the three candidates that n 3 would give, and usage
    counts all three."""
    candidates = (await client.post("/v1/completions", json=completion(n=3, seed=5, logprobs=0))).json()
    means = [mean(c["logprobs"]["token_logprobs"]) for c in candidates["choices"]]
    best = (await client.post("/v1/completions", json=completion(best_of=3, seed=5, logprobs=0))).json()
    (choice,) = best["choices"]
    assert choice["text"] == candidates["choices"][means.index(max(means))]["text"] and choice["index"] == 0
    assert best["usage"]["completion_tokens"] == 90


async def test_tgi_best_of_answers_the_best_and_lists_the_others(client):
    body = {"inputs": "the king", "parameters": {"max_new_tokens": 20, "best_of": 3, "do_sample": True,
                                                 "seed": 2, "details": True}}
    details = (await client.post("/generate", json=body)).json()["details"]
    others = details["best_of_sequences"]
    assert len(others) == 2 and {details["seed"], *(o["seed"] for o in others)} == {2, 3, 4}
    chosen = mean([t["logprob"] for t in details["tokens"]])
    assert all(chosen >= mean([t["logprob"] for t in o["tokens"]]) for o in others)


async def test_penalties_change_the_text_and_keep_the_reported_logprobs_unmodified(client):
    """The drawn characters follow the penalised distribution; their log-probabilities are the model's
    own (the same character at the same place gets the same log-probability either way)."""
    base = {"inputs": "the king and the", "parameters": {"max_new_tokens": 40, "details": True}}
    greedy = (await client.post("/generate", json=base)).json()
    penalised = {**base, "parameters": {**base["parameters"], "repetition_penalty": 3.0}}
    other = (await client.post("/generate", json=penalised)).json()
    assert other["generated_text"] != greedy["generated_text"]
    first_change = next(i for i, (a, b) in enumerate(zip(greedy["generated_text"], other["generated_text"],
                                                          strict=False)) if a != b)
    same = greedy["details"]["tokens"][:first_change]
    assert same == other["details"]["tokens"][:first_change]  # identical prefix, identical logprobs
    assert all(math.isfinite(t["logprob"]) and t["logprob"] <= 0 for t in other["details"]["tokens"])


@pytest.mark.parametrize("parameters", [{"min_p": 0.3}, {"typical_p": 0.5}, {"frequency_penalty": 1.5},
                                        {"repetition_penalty": 1.3, "min_p": 0.1, "typical_p": 0.9}])
async def test_a_seeded_request_with_controls_is_the_same_alone_and_in_a_batch(client, parameters):
    """Batch invariance with the controls on: alone, and as one of a list of prompts."""
    seeded = {"max_new_tokens": 30, "seed": 11, "do_sample": True, **parameters}
    alone = (await client.post("/generate", json={"inputs": "war", "parameters": seeded})).json()
    batch = (await client.post("/generate", json={"inputs": ["the king", "war", "my lord"],
                                                  "parameters": seeded})).json()
    assert batch[1]["generated_text"] == alone["generated_text"]
