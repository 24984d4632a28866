"""The sampling controls through both protocols: penalties, min-p, typical-p, logit bias, best-of.

Each control is shown to change the draw the way it should: every character it let through is one
the hand computation (`tests.reference`) allows, and the same request without the control
draws characters it would not have allowed, so a route that dropped the control would fail.
"""

import math
from pathlib import Path

import pytest

from charlm.checkpoint import load_model
from tests import reference

pytestmark = pytest.mark.anyio
LSTM = "tiny-lstm"  # recurrent: `forward` over the whole text is exactly what decoding saw
PROMPTS = ["the king", "war", "my lord", "night of love"]
CHARS = 40


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


@pytest.fixture(scope="module")
def lstm(tiny_models: Path):
    return load_model(tiny_models / LSTM)


async def tgi_texts(client, **parameters) -> list[str]:
    """The texts of PROMPTS, one TGI request with list inputs."""
    body = {"inputs": PROMPTS, "model": LSTM, "parameters": {"max_new_tokens": CHARS, "seed": 3, **parameters}}
    response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return [answer["generated_text"] for answer in response.json()]


async def openai_texts(client, **fields) -> list[str]:
    """The texts of PROMPTS, one OpenAI completion (choice i is prompt i)."""
    response = await client.post("/v1/completions", json=completion(model=LSTM, prompt=PROMPTS, max_tokens=CHARS,
                                                                      seed=3, **fields))
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
    return [choice["text"] for choice in choices]


def misses_of(lstm, texts, judge) -> list[list[int]]:
    """For each prompt's text, the steps `judge(logits, prompt ids, drawn ids)` finds impossible."""
    encode = lambda text: lstm.vocab.encode(text).tolist()  # noqa: E731
    return [judge(reference.next_char_logits(lstm, prompt, text), encode(prompt), encode(text))
            for prompt, text in zip(PROMPTS, texts, strict=True)]


def assert_control_took_effect(controlled: list[list[int]], plain: list[list[int]]) -> None:
    assert controlled == [[]] * len(PROMPTS), f"draws the control forbids, at steps {controlled}"
    assert any(plain), "without the control every draw was allowed anyway: this check could not fail"


@pytest.mark.parametrize("protocol", ["tgi", "openai"])
async def test_min_p_draws_only_characters_near_the_most_likely(client, lstm, protocol):
    texts = tgi_texts if protocol == "tgi" else openai_texts
    judge = lambda logits, prompt, drawn: reference.min_p_misses(logits, drawn, 0.3)  # noqa: E731
    controlled = misses_of(lstm, await texts(client, temperature=1.0, min_p=0.3), judge)
    assert_control_took_effect(controlled, misses_of(lstm, await texts(client, temperature=1.0), judge))


async def test_typical_p_draws_only_from_the_typical_set(client, lstm):
    judge = lambda logits, prompt, drawn: reference.typical_misses(logits, drawn, 0.5)  # noqa: E731
    controlled = misses_of(lstm, await tgi_texts(client, typical_p=0.5), judge)  # typical_p alone samples
    assert_control_took_effect(controlled, misses_of(lstm, await tgi_texts(client, do_sample=True), judge))


async def test_tgi_frequency_penalty_follows_each_characters_share_of_the_text(client, lstm):
    def judge(logits, prompt, drawn):
        return reference.greedy_misses(reference.tgi_frequency_adjusted(logits, prompt, drawn, 2.0), drawn)

    controlled = misses_of(lstm, await tgi_texts(client, frequency_penalty=2.0), judge)  # greedy
    assert_control_took_effect(controlled, misses_of(lstm, await tgi_texts(client), judge))


@pytest.mark.parametrize(("frequency", "presence"), [(1.0, 0.0), (0.0, 1.5)])
async def test_openai_penalties_follow_the_counts_of_generated_characters(client, lstm, frequency, presence):
    def judge(logits, prompt, drawn):
        adjusted = reference.openai_penalties_adjusted(logits, drawn, frequency, presence)
        return reference.greedy_misses(adjusted, drawn)

    penalties = {"frequency_penalty": frequency, "presence_penalty": presence}
    controlled = misses_of(lstm, await openai_texts(client, temperature=0, **penalties), judge)
    assert_control_took_effect(controlled, misses_of(lstm, await openai_texts(client, temperature=0), judge))
