"""The protocols' own client libraries (openai, text_generation, huggingface_hub), unchanged, against a live server."""

from __future__ import annotations

import re

import huggingface_hub
import openai
import pytest
import text_generation
from text_generation.errors import ValidationError
from text_generation.types import Grammar, GrammarType

from charlm.checkpoint import load_model
from tests import reference
from tests.service.helpers import TINY_NAMES, live_server


@pytest.fixture(scope="module", params=[1, 7], ids=["interval-1", "interval-7"])
def base_url(tiny_models, request):
    """A server sending each character as it comes, and one sending them seven at a time. Its
    default model is the LSTM, whose distributions `tests.reference` computes by hand (the
    TGI client names no model)."""
    with live_server(tiny_models, stream_interval=request.param, default_model="tiny-lstm") as (base, _):
        yield base


@pytest.fixture(scope="module")
def lstm(tiny_models):
    return load_model(tiny_models / "tiny-lstm")


def misses(lstm, prompt: str, text: str, judge) -> list[int]:
    """The steps of `text` that `judge(logits, prompt ids, drawn ids)` finds the control forbids."""
    ids = lstm.vocab.encode(text).tolist()
    return judge(reference.next_char_logits(lstm, prompt, text), lstm.vocab.encode(prompt).tolist(), ids)


def test_text_generation_client_generates_and_streams(base_url):
    client = text_generation.Client(base_url, timeout=60)
    response = client.generate("the king", max_new_tokens=25, do_sample=True, seed=3)
    assert response.details.finish_reason.value == "length" and response.details.generated_tokens == 25
    assert response.generated_text == "".join(t.text for t in response.details.tokens)
    streamed = list(client.generate_stream("the king", max_new_tokens=25, do_sample=True, seed=3))
    assert "".join(s.token.text for s in streamed if not s.token.special) == response.generated_text
    assert streamed[-1].details.finish_reason.value == "length"


def test_text_generation_client_sees_stop_sequences_and_errors(base_url):
    client = text_generation.Client(base_url, timeout=60)
    text = client.generate("the king", max_new_tokens=40).generated_text
    stop = text[5:8]
    stopped = client.generate("the king", max_new_tokens=40, stop_sequences=[stop])
    assert stopped.generated_text == text[: text.find(stop)]
    assert stopped.details.finish_reason.value == "stop_sequence"
    with pytest.raises(ValidationError, match="U\\+20AC"):
        client.generate("€ the king", max_new_tokens=5)


def test_openai_client_completes_and_streams(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model="tiny-lstm", prompt="the king", max_tokens=20, seed=9,
                                           logprobs=2)
    (choice,) = completion.choices
    assert choice.finish_reason == "length" and len(choice.text) == 20
    assert completion.usage.completion_tokens == 20 and len(choice.logprobs.top_logprobs) == 20
    chunks = list(client.completions.create(model="tiny-lstm", prompt="the king", max_tokens=20, seed=9,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert {m.id for m in client.models.list()} == TINY_NAMES


def test_openai_client_raises_its_own_errors(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=5)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny-gpt", prompt="hi", max_tokens=5, temperature=-1)


def test_text_generation_client_passes_the_sampling_controls(base_url, lstm):
    """typical_p and frequency_penalty take effect (judged by hand: tests.reference), and
    the same requests without them draw what the controls forbid."""
    client = text_generation.Client(base_url, timeout=60)
    prompt, chars = "the king", 60

    def typical(logits, prompt_ids, drawn):
        return reference.typical_misses(logits, drawn, 0.5)

    typical_text = client.generate(prompt, max_new_tokens=chars, typical_p=0.5, seed=3).generated_text
    plain_text = client.generate(prompt, max_new_tokens=chars, do_sample=True, seed=3).generated_text
    assert misses(lstm, prompt, typical_text, typical) == [] and misses(lstm, prompt, plain_text, typical)

    def frequency(logits, prompt_ids, drawn):
        return reference.greedy_misses(reference.tgi_frequency_adjusted(logits, prompt_ids, drawn, 2.0), drawn)

    penalised = client.generate(prompt, max_new_tokens=chars, frequency_penalty=2.0).generated_text  # greedy
    greedy = client.generate(prompt, max_new_tokens=chars).generated_text
    assert misses(lstm, prompt, penalised, frequency) == [] and misses(lstm, prompt, greedy, frequency)
    best = client.generate(prompt, max_new_tokens=25, do_sample=True, best_of=2)  # TGI's client: no seed
    assert len(best.details.best_of_sequences) == 1


def test_openai_client_passes_the_sampling_controls(base_url, lstm):
    """The penalties and min-p (an extension, sent in the body) take effect, judged by hand; best_of,
    n and logit_bias arrive too."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    prompt, chars = "the king", 60

    def complete(max_tokens=chars, **fields):  # type: ignore[no-untyped-def]
        return client.completions.create(model="tiny-lstm", prompt=prompt, max_tokens=max_tokens, seed=9, **fields)

    def penalties(logits, prompt_ids, drawn):
        return reference.greedy_misses(reference.openai_penalties_adjusted(logits, drawn, 0.7, 0.5), drawn)

    penalised = complete(temperature=0, frequency_penalty=0.7, presence_penalty=0.5).choices[0].text
    greedy = complete(temperature=0).choices[0].text
    assert misses(lstm, prompt, penalised, penalties) == [] and misses(lstm, prompt, greedy, penalties)

    def min_p(logits, prompt_ids, drawn):
        return reference.min_p_misses(logits, drawn, 0.3)

    kept = complete(temperature=1.0, extra_body={"min_p": 0.3}).choices[0].text
    plain = complete(temperature=1.0).choices[0].text
    assert misses(lstm, prompt, kept, min_p) == [] and misses(lstm, prompt, plain, min_p)
    completion = complete(max_tokens=20, n=2, best_of=3, logit_bias={"0": -100})
    assert len(completion.choices) == 2 and completion.usage.completion_tokens == 60
    assert not any(lstm.vocab.chars[0] in c.text for c in completion.choices)


TITLE = r"[A-Z][a-z]+ (of|the) [A-Z][a-z]+\n"


def test_text_generation_client_passes_a_grammar_and_reads_the_prefill(base_url):
    client = text_generation.Client(base_url, timeout=60)
    regex = "(king|queen|lord)( of the (king|queen))?"
    response = client.generate("the ", max_new_tokens=60, do_sample=True, seed=4, decoder_input_details=True,
                               grammar=Grammar(type=GrammarType.Regex, value=regex))
    assert re.fullmatch(regex, response.generated_text)
    assert response.details.finish_reason.value == "eos_token"
    assert [t.text for t in response.details.prefill] == list("the ")
    assert response.details.prefill[0].logprob is None and response.details.prefill[1].logprob < 0
    with pytest.raises(ValidationError, match="needs characters the model does not have"):
        client.generate("the ", grammar=Grammar(type=GrammarType.Json, value={
            "type": "object", "properties": {"age": {"type": "integer"}}}))


def test_huggingface_hub_client_passes_a_grammar_and_reads_the_prefill(base_url):
    client = huggingface_hub.InferenceClient(model=base_url, timeout=60)
    output = client.text_generation("the ", max_new_tokens=60, seed=4, do_sample=True, details=True,
                                    decoder_input_details=True,
                                    grammar={"type": "regex", "value": "(king|queen|lord)( of the (king|queen))?"})
    assert re.fullmatch("(king|queen|lord)( of the (king|queen))?", output.generated_text)
    assert output.details.finish_reason == "eos_token"
    assert [t.text for t in output.details.prefill] == list("the ") and output.details.prefill[0].logprob is None
    streamed = list(client.text_generation("the ", max_new_tokens=60, seed=4, do_sample=True, stream=True,
                                           grammar={"type": "regex", "value": "(king|queen|lord)"}))
    assert "".join(streamed) in ("king", "queen", "lord")
    with pytest.raises(huggingface_hub.errors.ValidationError, match="does not compile"):
        client.text_generation("the ", grammar={"type": "regex", "value": "(king"})


def test_openai_client_passes_grammars_and_scores_a_prompt(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    choices = ["the king", "my lord"]
    completion = client.completions.create(model="tiny-gpt", prompt="", max_tokens=20, seed=2,
                                           extra_body={"structured_outputs": {"choice": choices}})
    assert completion.choices[0].text in choices and completion.choices[0].finish_reason == "stop"
    regex = client.completions.create(model="tiny-gpt", prompt="the ", max_tokens=40, seed=2,
                                      extra_body={"guided_regex": "(king|queen)( and (lord|war))?"})
    assert re.fullmatch("(king|queen)( and (lord|war))?", regex.choices[0].text)
    scored = client.completions.create(model="tiny-gpt", prompt="the king", max_tokens=0, echo=True, logprobs=1)
    logprobs = scored.choices[0].logprobs
    assert logprobs.tokens == list("the king") and logprobs.token_logprobs[0] is None
    assert all(lp <= max(top.values()) for lp, top in zip(logprobs.token_logprobs[1:], logprobs.top_logprobs[1:],
                                                          strict=True))
    with pytest.raises(openai.BadRequestError, match="one grammar"):
        client.completions.create(model="tiny-gpt", prompt="x", max_tokens=5,
                                  extra_body={"response_format": {"type": "json_object"}, "guided_regex": "x"})
