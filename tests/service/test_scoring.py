"""Scoring any text over both protocols: TGI's prefill details, OpenAI's echo with logprobs and vLLM's
prompt_logprobs equal the model's forward pass; the tokenizer routes lm-evaluation-harness asks."""

import math

import pytest
import torch

from charlm.checkpoint import load_model
from tests.service.test_errors import assert_openai_error, assert_tgi_error

pytestmark = pytest.mark.anyio

TEXT = "The king and the queen"  # within every tiny model's context once the first character is gone


def forward_logprobs(model_dir, text: str) -> list[float]:
    loaded = load_model(model_dir)
    ids = torch.from_numpy(loaded.vocab.encode(text))
    with torch.inference_mode():
        logits, _ = loaded.model(ids[None, :-1])
    return logits[0].float().log_softmax(dim=-1).gather(1, ids[1:, None]).squeeze(1).tolist()


@pytest.mark.parametrize("model", ["tiny-gpt", "tiny-lstm", "tiny-lstm_attention"])
async def test_tgi_prefill_equals_the_forward_pass(client, tiny_models, model):
    text = TEXT[:16]  # the tiny gpt's context
    body = {"inputs": text, "model": model, "parameters": {"max_new_tokens": 3, "details": True,
                                                             "decoder_input_details": True}}
    details = (await client.post("/generate", json=body)).json()["details"]
    prefill = details["prefill"]
    assert [t["text"] for t in prefill] == list(text) and prefill[0]["logprob"] is None
    expected = forward_logprobs(tiny_models / model, text)
    assert [t["logprob"] for t in prefill[1:]] == pytest.approx(expected, abs=1e-4)
    assert len(details["tokens"]) == 3


async def test_prefill_needs_details_and_is_refused_on_a_stream(client):
    body = {"inputs": TEXT, "parameters": {"max_new_tokens": 2, "decoder_input_details": True}}
    assert (await client.post("/generate", json=body)).json()["details"] is None
    response = await client.post("/generate_stream", json=body)
    assert_tgi_error(response, 422, "decoder_input_details == true is not supported when streaming")


async def test_openai_echo_scores_the_prompt_alone_with_max_tokens_0(client, tiny_models):
    body = {"prompt": TEXT[:16], "echo": True, "logprobs": 2, "max_tokens": 0}
    (choice,) = (await client.post("/v1/completions", json=body)).json()["choices"]
    logprobs = choice["logprobs"]
    assert choice["text"] == TEXT[:16] and choice["finish_reason"] == "length"
    assert logprobs["tokens"] == list(TEXT[:16]) and logprobs["text_offset"] == list(range(16))
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1:] == pytest.approx(forward_logprobs(tiny_models / "tiny-gpt", TEXT[:16]),
                                                           abs=1e-4)
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][1:])


async def test_lm_evaluation_harness_scoring_requests(client):
    """What `local-completions` sends for loglikelihood: character ids, echo, logprobs 1, max_tokens 1; it
    sums token_logprobs from the end of the context to the character before the generated one, and
    counts a character as greedy when its log-prob equals the largest of its top_logprobs exactly."""
    context, continuation = "the king", " and the"
    ids = (await client.post("/tokenize", json={"prompt": context + continuation, "add_special_tokens": False}))
    tokens = ids.json()["tokens"]
    body = {"model": "tiny-gpt", "prompt": [tokens, tokens[:-1]], "temperature": 0, "max_tokens": 1, "logprobs": 1,
            "seed": 1234, "echo": True}
    choices = (await client.post("/v1/completions", json=body)).json()["choices"]
    assert len(choices) == 2 and choices[0]["text"].startswith(context + continuation)
    logprobs = choices[0]["logprobs"]
    assert len(logprobs["tokens"]) == len(tokens) + 1  # the prompt, then one generated character
    scored = logprobs["token_logprobs"][len(context) : -1]
    tops = logprobs["top_logprobs"][len(context) : -1]
    assert len(scored) == len(continuation) and all(isinstance(x, float) for x in scored)
    greedy = [lp == max(top.values()) for lp, top in zip(scored, tops, strict=True)]
    ranks = (await client.post("/v1/completions", json={**body, "prompt": context + continuation, "logprobs": None,
                                                           "prompt_logprobs": 0, "echo": False})).json()
    vllm = ranks["choices"][0]["prompt_logprobs"][len(context):]
    assert greedy == [entry[str(t)]["rank"] == 1 for entry, t in zip(vllm, tokens[len(context):], strict=True)]


async def test_vllm_prompt_logprobs_give_each_character_its_rank_and_alternatives(client):
    body = {"prompt": "the king", "max_tokens": 2, "prompt_logprobs": 3}
    (choice,) = (await client.post("/v1/completions", json=body)).json()["choices"]
    entries = choice["prompt_logprobs"]
    assert entries[0] is None and len(entries) == 8
    for entry in entries[1:]:
        assert 3 <= len(entry) <= 4  # the character itself, and the three most likely (it may be one of them)
        ranks = sorted(e["rank"] for e in entry.values())
        assert ranks[:3] == [1, 2, 3] or 1 in ranks
        assert all(e["logprob"] <= 0 and len(e["decoded_token"]) == 1 for e in entry.values())
    response = await client.post("/v1/completions", json={**body, "stream": True})
    assert_openai_error(response, 400, "prompt_logprobs cannot be streamed")


async def test_a_prompt_longer_than_the_context_is_scored_with_a_sliding_window(client):
    prompt = "the king and war" * 20  # 320 characters; the tiny gpt's context is 16, windows 8 apart
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 1, "details": True, "decoder_input_details": True}}
    prefill = (await client.post("/generate", json=body)).json()["details"]["prefill"]
    assert len(prefill) == len(prompt) and all(math.isfinite(t["logprob"]) for t in prefill[1:])
    # Past the first window, a character 16 further on sees the same characters before it.
    assert [t["logprob"] for t in prefill[40:200]] == pytest.approx([t["logprob"] for t in prefill[56:216]], abs=1e-5)
    assert [t["logprob"] for t in prefill[1:16]] != pytest.approx([t["logprob"] for t in prefill[17:32]], abs=1e-3)


async def test_cyrillic_prompts_are_scored(client):
    body = {"inputs": "я помню чудное", "parameters": {"max_new_tokens": 1, "details": True,
                                                          "decoder_input_details": True}}
    prefill = (await client.post("/generate", json=body)).json()["details"]["prefill"]
    assert "".join(t["text"] for t in prefill) == "я помню чудное"


async def test_tokenize_detokenize_and_tokenizer_info(client):
    tokens = (await client.post("/tokenize", json={"prompt": "the king", "add_special_tokens": False})).json()
    assert tokens["count"] == 8 and tokens["max_model_len"] == 16
    text = (await client.post("/detokenize", json={"tokens": tokens["tokens"]})).json()
    assert text == {"prompt": "the king"}
    info = (await client.get("/tokenizer_info")).json()
    assert info["eos_token"] is None and info["model"] == "tiny-gpt" and len(info["chars"]) == info["vocab_size"]
    assert [info["chars"][i] for i in tokens["tokens"]] == list("the king")
    lstm = (await client.get("/tokenizer_info", params={"model": "tiny-lstm"})).json()
    assert lstm["model_max_length"] is None


async def test_tokenizer_errors(client):
    assert_tgi_error(await client.post("/tokenize", json={"prompt": "the ☃"}), 422, "'☃' (U+2603) at 4")
    assert_tgi_error(await client.post("/detokenize", json={"tokens": [1, 9999]}), 422, "[9999] outside the vocabulary")
    assert_tgi_error(await client.post("/tokenize", json={"prompt": "x", "model": "nope"}), 404, "nope")
    assert_tgi_error(await client.post("/tokenize", json={"text": "x"}), 422, "unknown field 'text'")
    assert_tgi_error(await client.post("/tokenize", json={}), 422, "send a prompt or messages")
    assert_tgi_error(await client.post("/tokenize", json={"prompt": "x", "messages": [{"role": "user"}]}), 422,
                     "send a prompt or messages")
    response = await client.post("/v1/completions", json={"prompt": [1, 5000], "max_tokens": 1})
    assert_openai_error(response, 422, "character id(s) [5000] outside the vocabulary of model tiny-gpt")
