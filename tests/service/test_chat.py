"""`POST /v1/chat/completions` over raw HTTP: the play template, replies, streams and the errors."""

from __future__ import annotations

import json

import pytest

from tests.service.helpers import engine_of, fail_the_nth_step, running_app, settings_for

pytestmark = pytest.mark.anyio
LINE = "The king shall speak of love."


@pytest.fixture()
async def play(play_models):
    async with running_app(settings_for(play_models, default_model="tiny-play")) as (client, _):
        yield client


def chat(content: str = LINE, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], **fields}


def events(text: str) -> list:
    """The data of each SSE event: JSON, or the literal [DONE]."""
    data = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


async def rendered(client, body: dict) -> str:
    """The prompt the model sees for `body`'s conversation (/tokenize with messages)."""
    fields = {k: v for k, v in body.items() if k in ("messages", "model", "add_generation_prompt",
                                                    "continue_final_message", "chat_template_kwargs")}
    response = await client.post("/tokenize", json=fields)
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


async def test_a_reply_is_one_speech_of_the_assistant(play):
    body = chat(max_completion_tokens=200, seed=1)
    response = await play.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    (choice,) = answer["choices"]
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["model"] == "tiny-play" and choice["message"]["role"] == "assistant"
    reply = choice["message"]["content"]
    assert "\n\n" not in reply  # the speech's end is the default stop: no next speaker's header
    assert choice["finish_reason"] in ("stop", "length")
    prompt = await rendered(play, body)
    assert prompt == f"ROMEO:\n{LINE}\n\nJULIET:\n"
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    plain = await play.post("/v1/completions", json={"prompt": prompt, "max_tokens": 200, "seed": 1,
                                                     "stop": "\n\n"})
    assert plain.json()["choices"][0]["text"] == reply  # the same draws as the completion of its prompt


async def test_names_roles_and_blank_lines_become_speeches(play):
    messages = [
        {"role": "system", "content": "Love and war."},
        {"role": "user", "content": "My lord\n\n\nJULIET:\nthe queen", "name": "nurse"},
        {"role": "assistant", "content": [{"type": "text", "text": "Speak"}, {"type": "text", "text": "of war!"}]},
        {"role": "user", "content": None},
    ]
    prompt = await rendered(play, {"messages": messages, "chat_template_kwargs": {"assistant_name": "Messenger"}})
    assert prompt == ("CHORUS:\nLove and war.\n\nNURSE:\nMy lord\nJULIET:\nthe queen\n\n"
                      "MESSENGER:\nSpeak\nof war!\n\nMESSENGER:\n")
    assert "\n\nJULIET:" not in prompt  # a blank line inside a message cannot begin another speech
    quiet = await rendered(play, {"messages": messages[:2], "chat_template_kwargs": {"system_name": ""},
                                  "add_generation_prompt": False})
    assert quiet == "NURSE:\nMy lord\nJULIET:\nthe queen\n\n"


async def test_continue_final_message_continues_the_speech(play):
    body = {"messages": [{"role": "user", "content": LINE}, {"role": "assistant", "content": "The queen"}],
            "add_generation_prompt": False, "continue_final_message": True, "max_completion_tokens": 30, "seed": 2}
    assert (await rendered(play, body)).endswith("\n\nJULIET:\nThe queen")
    response = await play.post("/v1/chat/completions", json={**body, "echo": True})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("The queen")


async def test_a_stream_is_the_same_reply_in_openai_chunks(play):
    body = chat(max_completion_tokens=40, seed=5, n=2, logprobs=True, top_logprobs=2)
    whole = (await play.post("/v1/chat/completions", json=body)).json()
    response = await play.post("/v1/chat/completions",
                               json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response.text)
    assert chunks[-1] == "[DONE]" and chunks[-2]["choices"] == [] and chunks[-2]["usage"] == whole["usage"]
    assert {c["id"] for c in chunks[:-1]} == {whole["id"].replace(whole["id"], chunks[0]["id"])}
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-2] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == whole["choices"][index]["finish_reason"]
        text = "".join(c["delta"].get("content", "") for c in mine)
        assert text == whole["choices"][index]["message"]["content"]
        tokens = [t for c in mine[1:-1] for t in c["logprobs"]["content"]]
        assert tokens == whole["choices"][index]["logprobs"]["content"]
        assert "".join(t["token"] for t in tokens) == text
        assert all(len(t["top_logprobs"]) == 2 and t["bytes"] == list(t["token"].encode()) for t in tokens)
    assert all(c["usage"] is None for c in chunks[:-2])


async def test_without_include_usage_no_chunk_carries_usage(play):
    response = await play.post("/v1/chat/completions", json=chat(max_tokens=5, stream=True))
    chunks = events(response.text)
    assert chunks[-1] == "[DONE]" and all("usage" not in c for c in chunks[:-1])
    assert sum(len(c["choices"][0]["delta"].get("content", "")) for c in chunks[:-1]) <= 5


async def test_a_request_stop_replaces_the_speech_end(play):
    body = chat(max_completion_tokens=80, seed=3, stop=[])
    text = (await play.post("/v1/chat/completions", json=body)).json()["choices"][0]["message"]["content"]
    assert len(text) == 80  # nothing stops it: the play's blank line is not a stop any more


async def test_a_grammar_is_not_cut_by_the_speech_end(play):
    """The model's default stop ends a reply, not a grammar's text: a choice may hold a blank line."""
    answer = (await play.post("/v1/chat/completions", json=chat(guided_choice=["Love.\n\nWar."]))).json()
    (choice,) = answer["choices"]
    assert choice["message"]["content"] == "Love.\n\nWar." and choice["finish_reason"] == "stop"


async def test_max_completion_tokens_wins_over_max_tokens(play):
    body = chat(max_tokens=50, max_completion_tokens=3, stop=[])
    answer = (await play.post("/v1/chat/completions", json=body)).json()
    assert answer["usage"]["completion_tokens"] == 3
    completion = await play.post("/v1/completions", json={"prompt": "The", "max_tokens": 50,
                                                          "max_completion_tokens": 4})
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 4


async def test_neutral_fields_are_accepted_and_tools_ignored(play):
    body = chat(max_completion_tokens=5, store=False, metadata={"a": "b"}, user="u", service_tier="auto",
                parallel_tool_calls=False, modalities=["text"], prompt_cache_key="k", safety_identifier="s",
                tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="none", reasoning_effort=None,
                stream_options=None, verbosity="medium", frequency_penalty=0.5, presence_penalty=0.1, top_k=5,
                min_p=0.05, typical_p=0.9, repetition_penalty=1.1, logit_bias={"3": -5}, top_p=0.9, temperature=0.7)
    response = await play.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("body", "status", "needles"), [
    ({"messages": []}, 400, ["messages", "at least 1"]),
    ({"messages": [{"role": "bot", "content": "x"}]}, 400, ["messages.0.role"]),
    (chat([{"type": "image_url", "image_url": {"url": "http://x"}}]), 400, ["image_url", "text only"]),
    (chat([{"type": "input_audio", "input_audio": {}}]), 400, ["input_audio"]),
    (chat(tools=[{"type": "function"}], tool_choice="auto"), 400, ["tool_choice", "cannot call tools"]),
    (chat(tool_choice="required"), 400, ["tool_choice"]),
    (chat(function_call="auto"), 400, ["function_call"]),
    (chat(store=True), 400, ["store"]),
    (chat(audio={"voice": "x"}), 400, ["audio"]),
    (chat(n=0), 400, ["n"]),
    (chat(top_logprobs=3), 400, ["top_logprobs needs logprobs"]),
    (chat(top_logprobs=11, logprobs=True), 400, ["top_logprobs"]),
    (chat("a\n" * 9000), 400, ["18,000 characters", "prompt limit is 16,384"]),
    (chat(chat_template_kwargs={"user_name": "x" * 20000}), 400, ["prompt limit"]),
    (chat(bogus=1), 400, ["unknown field 'bogus'"]),
    (chat(add_generation_prompt=True, continue_final_message=True), 400, ["continue_final_message"]),
    (chat(add_generation_prompt=False, continue_final_message=True), 400, ["the last message is the user's"]),
    ({"messages": [{"role": "user", "content": "x", "name": "a\nb"}]}, 400, ["line break"]),
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]}, 400, ["tool_calls"]),
    (chat("The € king"), 422, ["U+20AC"]),
    (chat(model="nobody"), 404, ["nobody"]),
    (chat(chat_template="{{ messages }}"), 400, ["chat_template", "TRUST_REQUEST_CHAT_TEMPLATE"]),
    (chat(chat_template_kwargs={"assistant_name": "Zed"}), 422, ["Z"]),
    (chat(max_completion_tokens=10**9), 400, ["max_completion_tokens", "limit"]),
    (chat(n=17), 400, ["n is 17", "limit"]),
])
async def test_bad_requests_name_the_problem(play, body, status, needles):
    response = await play.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for needle in needles:
        assert needle in error["message"], error


async def test_a_model_without_a_template_says_how_to_add_one(tiny_models):
    async with running_app(settings_for(tiny_models)) as (client, _):
        response = await client.post("/v1/chat/completions", json=chat("the king"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "no_chat_template" and "chat_template.jinja" in error["message"]
    assert "/v1/completions" in error["message"]


async def test_an_error_mid_stream_is_sent_before_done(play_models, monkeypatch):
    async with running_app(settings_for(play_models, default_model="tiny-play")) as (client, app):
        fail_the_nth_step(engine_of(app, "tiny-play"), monkeypatch, 5, "device lost")
        response = await client.post("/v1/chat/completions", json=chat(max_completion_tokens=30, stop=[],
                                                                        stream=True))
    chunks = events(response.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])  # some of the reply came
    assert chunks[-1] == "[DONE]" and "device lost" in chunks[-2]["error"]["message"]


async def test_a_long_conversation_renders_off_the_event_loop_to_the_same_prompt(play):
    lines = "\n".join(["The king shall speak."] * 300)  # 6,599 characters: rendered in a thread
    prompt = await rendered(play, {"messages": [{"role": "user", "content": lines}]})
    assert prompt == f"ROMEO:\n{lines}\n\nJULIET:\n"
    reply = await play.post("/v1/chat/completions", json=chat(lines, max_completion_tokens=5))
    assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == len(prompt)
