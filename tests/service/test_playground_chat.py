"""The playground's Chat view, in headless Chromium against the real server on the tiny play model:
what the page sends is the conversation with its speakers' names, what it shows is what
/v1/chat/completions answers, and the server renders the names into the play."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.browser import bucket, open_page, wait_for_script
from tests.service.helpers import LONG, cancelled_count, engine_of, live_server, wait_until

ROUTE = "/v1/chat/completions"
LINE = "The king shall speak of love."  # in the play's alphabet
SECOND_LINE = "My lord, the queen!"
TURNS = """() => [...document.querySelectorAll('#chat-turns .turn')].map(turn => [
  turn.querySelector('h2').textContent, turn.querySelector('.turn-text, .generated').textContent])"""


@pytest.fixture(scope="module")
def chat_server(play_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """tiny-play as it ships (its template, a speech's end as its stop), and two copies: tiny-plain
    without a chat template, and tiny-endless with one but no default stop, whose replies run on."""
    models = tmp_path_factory.mktemp("chat-models")
    play = shutil.copytree(play_models / "tiny-play", models / "tiny-play")
    plain = shutil.copytree(play, models / "tiny-plain")
    (plain / "chat_template.jinja").unlink()
    endless = shutil.copytree(play, models / "tiny-endless")
    (endless / "generation_config.json").unlink()
    with live_server(models, default_model="tiny-play", max_new_tokens=LONG) as running:
        yield running


@pytest.fixture()
def chat_page(browser: Any, chat_server: tuple[str, Any]) -> Iterator[Any]:
    """A fresh playground page on `chat_server`, in the Chat view."""
    with open_page(browser, chat_server[0]) as page:
        page.check("#view-chat")
        yield page


def sent_bodies(page: Any) -> list[dict[str, Any]]:
    """The bodies of the page's chat requests from now on, as they leave the browser."""
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda request: bodies.append(request.post_data_json) if request.url.endswith(ROUTE) else None)
    return bodies


def say(page: Any, line: str) -> None:
    page.fill("#chat-message", line)
    page.click("#send")


def wait_for_replies(page: Any, count: int, *statuses: str) -> list[Any]:
    """Wait until the conversation holds `count` replies, each ended in one of `statuses`."""
    wait_for_script(
        page,
        "([count, statuses]) => { const replies = [...document.querySelectorAll('#chat-turns .reply')];"
        " return replies.length === count && replies.every(r => statuses.includes(r.dataset.status)); }",
        [count, list(statuses)],
    )
    return page.locator("#chat-turns .reply").all()


def answer(base: str, body: dict[str, Any]) -> dict[str, Any]:
    """The server's answer to a body the page sent, asked again without a stream."""
    response = httpx.post(f"{base}{ROUTE}", json={**body, "stream": False}, timeout=60)
    assert response.status_code == 200, response.text
    choice: dict[str, Any] = response.json()["choices"][0]
    return choice


def test_a_line_is_answered_under_the_assistants_name_shaded_as_the_server_scored_it(chat_page, chat_server):
    bodies = sent_bodies(chat_page)
    chat_page.check("#show-probs")
    chat_page.fill("#seed", "3")
    chat_page.fill("#chat-message", LINE)
    with chat_page.expect_response(lambda response: response.url.endswith(ROUTE)) as answered:
        chat_page.click("#send")
    assert answered.value.headers["content-type"].startswith("text/event-stream")
    [reply] = wait_for_replies(chat_page, 1, "finished")
    [body] = bodies
    assert body["messages"] == [{"role": "user", "name": "ROMEO", "content": LINE}]
    assert body["chat_template_kwargs"] == {"user_name": "ROMEO", "assistant_name": "JULIET"}
    assert body["stream"] is True and body["logprobs"] is True and body["top_logprobs"] == 5 and body["seed"] == 3
    expected = answer(chat_server[0], body)
    text = expected["message"]["content"]
    assert chat_page.evaluate(TURNS) == [["ROMEO", LINE], ["JULIET", text]]
    assert reply.locator(".stat-finish").text_content() == expected["finish_reason"]
    assert reply.locator(".stat-seed").text_content() == "3"
    spans = reply.locator(".generated > span")
    shades = spans.evaluate_all("spans => spans.map(s => Number(s.dataset.b))")
    assert shades == [bucket(t["logprob"]) for t in expected["logprobs"]["content"]]
    background = "s => getComputedStyle(s).backgroundColor"
    assert spans.nth(shades.index(max(shades))).evaluate(background) != "rgba(0, 0, 0, 0)"
    spans.first.hover()  # the alternatives, shown without branching: a chat cannot continue a reply
    assert reply.locator(".alternatives .alternative").count() == 5
    assert reply.locator(".alternatives button").count() == 0
    assert chat_page.input_value("#chat-message") == "" and chat_page.is_enabled("#send")


def test_changed_names_speak_the_next_line_and_the_server_renders_them(chat_page, chat_server):
    base = chat_server[0]
    bodies = sent_bodies(chat_page)
    chat_page.fill("#seed", "5")
    say(chat_page, LINE)
    wait_for_replies(chat_page, 1, "finished")
    first = chat_page.evaluate(TURNS)[1][1]
    assert first.strip(), "the first reply is empty: pick another seed"
    chat_page.fill("#user-name", "Nurse")
    chat_page.fill("#assistant-name", "MESSENGER")
    chat_page.fill("#chat-message", SECOND_LINE)
    chat_page.press("#chat-message", "Control+Enter")
    wait_for_replies(chat_page, 2, "finished")
    second = bodies[1]
    assert second["messages"] == [
        {"role": "user", "name": "ROMEO", "content": LINE},
        {"role": "assistant", "name": "JULIET", "content": first},
        {"role": "user", "name": "Nurse", "content": SECOND_LINE},
    ]
    assert second["chat_template_kwargs"] == {"user_name": "Nurse", "assistant_name": "MESSENGER"}
    fields = {"messages": second["messages"], "chat_template_kwargs": second["chat_template_kwargs"]}
    prompt = httpx.post(f"{base}/tokenize", json=fields, timeout=60).json()["prompt"]  # what the model read
    assert prompt.startswith(f"ROMEO:\n{LINE}\n\nJULIET:\n")
    assert prompt.endswith(f"\n\nNURSE:\n{SECOND_LINE}\n\nMESSENGER:\n")
    turns = chat_page.evaluate(TURNS)
    assert [speaker for speaker, _ in turns] == ["ROMEO", "JULIET", "Nurse", "MESSENGER"]
    assert turns[3][1] == answer(base, second)["message"]["content"]
    chat_page.click("#clear")
    assert chat_page.evaluate(TURNS) == []
    say(chat_page, LINE)
    wait_for_replies(chat_page, 1, "finished")
    assert bodies[2]["messages"] == [{"role": "user", "name": "Nurse", "content": LINE}]


def test_stop_cuts_a_reply_short_and_the_conversation_keeps_what_was_said(chat_page, chat_server):
    base, app = chat_server
    bodies = sent_bodies(chat_page)
    before = cancelled_count(base)
    chat_page.select_option("#model", "tiny-endless")
    chat_page.check("#show-probs")
    chat_page.fill("#max-new-tokens", str(LONG))
    say(chat_page, LINE)
    wait_for_script(chat_page, "() => document.querySelector('#chat-turns .reply .generated').textContent.length > 30")
    reply = chat_page.locator("#chat-turns .reply")
    assert reply.get_attribute("data-status") == "streaming"  # tiny-endless has no stop: it runs until stopped
    assert reply.locator(".generated > span:not([data-b])").count() == 0  # shaded as it streams
    assert chat_page.get_attribute("#chat-turns", "class") == "shaded"
    assert chat_page.is_disabled("#send") and chat_page.is_disabled("#clear")
    chat_page.click("#stop-button")
    wait_for_replies(chat_page, 1, "stopped")
    assert reply.locator(".stat-finish").text_content() == "stopped by you"
    assert wait_until(lambda: cancelled_count(base) == before + 1), "the server did not cancel the sequence"
    assert wait_until(lambda: engine_of(app, "tiny-endless").active == 0), "the sequence stayed in the batch"
    kept = chat_page.evaluate(TURNS)[1][1]
    chat_page.fill("#max-new-tokens", "5")
    say(chat_page, SECOND_LINE)
    wait_for_replies(chat_page, 2, "stopped", "finished")
    assert bodies[1]["messages"][1] == {"role": "assistant", "name": "JULIET", "content": kept}


def test_a_model_without_a_chat_template_shows_the_servers_reason(chat_page, chat_server):
    chat_page.select_option("#model", "tiny-plain")
    say(chat_page, LINE)
    chat_page.wait_for_selector("#model-error:not([hidden])")
    refusal = httpx.post(f"{chat_server[0]}{ROUTE}", timeout=60,
                         json={"model": "tiny-plain", "messages": [{"role": "user", "content": LINE}]})
    assert refusal.status_code == 400
    assert chat_page.text_content("#model-error") == refusal.json()["error"]["message"]
    assert "no chat template" in chat_page.text_content("#model-error")
    assert chat_page.get_attribute("#model", "aria-invalid") == "true"
    assert chat_page.evaluate(TURNS) == []  # the turn is withdrawn, its line given back
    assert chat_page.input_value("#chat-message") == LINE
    chat_page.select_option("#model", "tiny-play")
    chat_page.click("#send")
    wait_for_replies(chat_page, 1, "finished")
    assert chat_page.is_hidden("#model-error") and chat_page.get_attribute("#model", "aria-invalid") is None


def test_a_line_the_model_cannot_read_and_an_empty_name_are_shown_next_to_their_fields(chat_page):
    say(chat_page, "The ☃ king")
    chat_page.wait_for_selector("#chat-message-error:not([hidden])")
    error = chat_page.text_content("#chat-message-error")
    assert "☃" in error and "not in the model's vocabulary" in error
    assert chat_page.evaluate(TURNS) == []
    chat_page.fill("#assistant-name", " ")
    say(chat_page, LINE)
    assert "enter a name" in chat_page.text_content("#assistant-name-error")
    assert chat_page.get_attribute("#assistant-name", "aria-invalid") == "true"
    assert chat_page.is_hidden("#chat-message-error")
