"""The chat clients people use, unchanged, against a live server: openai's `chat.completions`,
LangChain's `ChatOpenAI` and LiteLLM's `openai/` provider."""

from __future__ import annotations

import json
import os

import jsonschema
import openai
import pytest

from tests.service.helpers import live_server

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM would fetch its price list at import

import litellm
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

LINE = "The king shall speak of love."
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def base_url(play_models):
    with live_server(play_models, default_model="tiny-play") as (base, _):
        yield base


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_openai_chat_answers_and_streams_the_same_reply(client):
    messages = [{"role": "system", "content": "Love and war."}, {"role": "user", "content": LINE}]
    answer = client.chat.completions.create(model="tiny-play", messages=messages, max_completion_tokens=60, seed=4)
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert "\n\n" not in choice.message.content and answer.usage.completion_tokens >= len(choice.message.content)
    stream = client.chat.completions.create(model="tiny-play", messages=messages, max_completion_tokens=60, seed=4,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[-1].usage == answer.usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    follow_up = [*messages, choice.message, {"role": "user", "content": "My lord!"}]  # the reply as the SDK sends it
    assert client.chat.completions.create(model="tiny-play", messages=follow_up, max_completion_tokens=20).choices


def test_openai_chat_gives_n_choices_with_logprobs(client):
    answer = client.chat.completions.create(model="tiny-play", messages=[{"role": "user", "content": LINE}], n=2,
                                            max_completion_tokens=30, seed=8, logprobs=True, top_logprobs=3)
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].message.content != answer.choices[1].message.content  # seeds 8 and 9
    for choice in answer.choices:
        tokens = choice.logprobs.content
        assert "".join(t.token for t in tokens) == choice.message.content
        for t in tokens:
            assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode() == t.token
            assert t.top_logprobs[0].logprob >= t.logprob - 1e-5  # the drawn one is never above the most likely


def test_openai_chat_raises_its_own_errors(client):
    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(model="tiny-play", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}])
    with pytest.raises(openai.BadRequestError, match="cannot call tools"):
        client.chat.completions.create(model="tiny-play", messages=[{"role": "user", "content": LINE}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                                       tool_choice="required")
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": LINE}])


def test_openai_chat_follows_a_json_schema(json_models, tmp_path):
    """On a model whose vocabulary has braces, served with a plain template (`--chat-template`)."""
    template = tmp_path / "lines.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}\n{% endfor %}", encoding="utf-8")
    with live_server(json_models, default_model="tiny-json", chat_template=template) as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="tiny-json", messages=[{"role": "user", "content": '{"name": "Love", "age": 3, "alive": true}'}],
            max_completion_tokens=80, seed=2, n=3,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_langchain_chat_openai_invokes_and_streams(base_url):
    chat = ChatOpenAI(base_url=f"{base_url}/v1", api_key="unused", model="tiny-play", max_retries=0, seed=6,
                      max_completion_tokens=50, temperature=0.8)
    messages = [SystemMessage("Love and war."), HumanMessage(LINE)]
    reply = chat.invoke(messages)
    assert isinstance(reply, AIMessage) and reply.content and "\n\n" not in reply.content
    assert reply.usage_metadata["output_tokens"] >= len(reply.content)
    streamed = list(chat.stream(messages))
    assert "".join(chunk.content for chunk in streamed) == reply.content
    follow_up = chat.invoke([*messages, reply, HumanMessage("My lord!")])
    assert isinstance(follow_up.content, str)


def test_litellm_openai_provider_completes_and_streams(base_url):
    fields = {"model": "openai/tiny-play", "api_base": f"{base_url}/v1", "api_key": "unused", "max_tokens": 40,
              "seed": 5, "messages": [{"role": "user", "content": LINE}]}
    answer = litellm.completion(**fields)
    text = answer.choices[0].message.content
    assert text and "\n\n" not in text and answer.model.endswith("tiny-play")
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in litellm.completion(**fields, stream=True))
    assert streamed == text
