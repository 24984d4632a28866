"""Where a chat's template comes from (the model directory, the server's fallback, a trusted
request), that changes to it are served at once, and that its failures are 400s naming them."""

from __future__ import annotations

import shutil
import time

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.service.helpers import running_app, settings_for

pytestmark = pytest.mark.anyio
CHAT = {"messages": [{"role": "user", "content": "The king"}], "max_completion_tokens": 5}
LINES = "{% for m in messages %}{{ m.content }}\n{% endfor %}"


@pytest.fixture()
def own_play(play_models, tmp_path):
    """A copy of the play model's directory, to change its template in."""
    models = tmp_path / "models"
    shutil.copytree(play_models, models)
    return models


async def prompt_of(client, **fields) -> tuple[int, dict]:
    response = await client.post("/tokenize", json={"messages": CHAT["messages"], **fields})
    return response.status_code, response.json()


async def test_the_servers_template_serves_models_without_one(tiny_models, tmp_path):
    template = tmp_path / "lines.jinja"
    template.write_text(LINES, encoding="utf-8")
    async with running_app(settings_for(tiny_models, chat_template=template)) as (client, _):
        status, body = await prompt_of(client)
        assert status == 200 and body["prompt"] == "The king\n"
        reply = await client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200 and len(reply.json()["choices"][0]["message"]["content"]) == 5
        info = (await client.get("/tokenizer_info")).json()
        assert info["chat_template"] == LINES


async def test_a_changed_template_is_used_by_the_next_request(own_play):
    async with running_app(settings_for(own_play, default_model="tiny-play")) as (client, _):
        assert (await prompt_of(client))[1]["prompt"] == "ROMEO:\nThe king\n\nJULIET:\n"
        path = own_play / "tiny-play" / "chat_template.jinja"
        time.sleep(0.01)  # a new modification time, on file systems with coarse clocks
        path.write_text("{{ messages[0].content }}!", encoding="utf-8")
        assert (await prompt_of(client))[1]["prompt"] == "The king!"
        path.write_text("{% if %}", encoding="utf-8")
        status, body = await prompt_of(client)
        assert status == 422 and "chat_template.jinja is not a valid Jinja template" in body["error"]
        chat = await client.post("/v1/chat/completions", json=CHAT)
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "chat_template_error"
        path.unlink()
        chat = await client.post("/v1/chat/completions", json=CHAT)
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "no_chat_template"


async def test_a_broken_generation_config_is_named(own_play):
    (own_play / "tiny-play" / "generation_config.json").write_text('{"stop_strings": [""]}', encoding="utf-8")
    async with running_app(settings_for(own_play, default_model="tiny-play")) as (client, _):
        chat = await client.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 400 and "generation_config.json: stop_strings" in chat.json()["error"]["message"]


async def test_a_trusted_request_template_is_rendered_within_the_limits(play_models):
    settings = settings_for(play_models, default_model="tiny-play", trust_request_chat_template=True,
                            chat_template_timeout_s=2, max_prompt_chars=100)
    async with running_app(settings) as (client, _):
        status, body = await prompt_of(client, chat_template="{{ messages[0].content | upper }}:")
        assert status == 200 and body["prompt"] == "THE KING:"
        reply = await client.post("/v1/chat/completions", json={**CHAT, "chat_template": LINES, "stop": []})
        assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == len("The king\n")
        slow = "{% for i in range(100000) %}{% endfor %}{{ messages[0].content }}"  # past the event loop's slice
        status, body = await prompt_of(client, chat_template=slow)
        assert status == 200 and body["prompt"] == "The king"  # finished in a thread, within its time
        endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        started = time.monotonic()
        reply = await client.post("/v1/chat/completions", json={**CHAT, "chat_template": endless})
        assert reply.status_code == 400 and "longer than 2 s" in reply.json()["error"]["message"]
        assert time.monotonic() - started < 20
        reply = await client.post("/v1/chat/completions", json={**CHAT, "chat_template": "{{ 'x' * 200 }}"})
        assert reply.status_code == 400 and "passed 100 characters" in reply.json()["error"]["message"]
        reply = await client.post("/v1/chat/completions", json={**CHAT, "chat_template": "{{ raise_exception('no') }}"})
        assert reply.status_code == 400 and reply.json()["error"]["message"].endswith("refused the conversation: no")
        health = await client.get("/health")
        assert health.status_code == 200  # the server answers on after all of these


def test_the_servers_template_must_exist_and_compile(tmp_path):
    with pytest.raises(ValidationError, match="cannot read chat template"):
        Settings(chat_template=tmp_path / "missing.jinja")
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for %}", encoding="utf-8")
    with pytest.raises(ValidationError, match="not a valid Jinja template"):
        Settings(chat_template=broken)
