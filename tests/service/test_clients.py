"""The two protocols' own client libraries, unchanged, against a live server."""

from __future__ import annotations

import openai
import pytest
import text_generation
from text_generation.errors import ValidationError

from tests.service.helpers import TINY_NAMES, live_server


@pytest.fixture(scope="module", params=[1, 7], ids=["interval-1", "interval-7"])
def base_url(tiny_models, request):
    """A server sending each character as it comes, and one sending them seven at a time."""
    with live_server(tiny_models, stream_interval=request.param) as (base, _):
        yield base


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


def test_text_generation_client_passes_the_sampling_controls(base_url):
    client = text_generation.Client(base_url, timeout=60)
    response = client.generate("the king", max_new_tokens=25, do_sample=True, seed=3, repetition_penalty=1.3,
                               frequency_penalty=0.5, typical_p=0.9)
    assert response.details.generated_tokens == 25 and response.details.seed == 3
    best = client.generate("the king", max_new_tokens=25, do_sample=True, best_of=2)  # TGI's client: no seed
    assert len(best.details.best_of_sequences) == 1


def test_openai_client_passes_the_sampling_controls(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model="tiny-gpt", prompt="the king", max_tokens=20, seed=9, n=2,
                                           best_of=3, frequency_penalty=0.4, presence_penalty=0.3,
                                           logit_bias={"0": -100})
    assert len(completion.choices) == 2 and completion.usage.completion_tokens == 60
    assert all(len(c.text) == 20 for c in completion.choices)
