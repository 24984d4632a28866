"""bench/serve.py's pure parts: what its clients count in each API's events, that its completions
prompt is its chat message as the bundled models' template renders it (so both generate from the
same text), and how its summary pairs the APIs measured in the same repeat."""

from __future__ import annotations

import sys
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the bench's scripts import their siblings by name
from serve_load import APIS, ERROR, Level  # noqa: E402
from serve_report import summary  # noqa: E402


def test_openai_events_count_the_characters_of_text_and_content_and_nothing_else():
    count = APIS["chat"].count
    assert count(b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}') == 0
    assert count(b'data: {"choices": [{"index": 0, "delta": {"content": "Ay, m\\u00e9"}}]}') == 6
    assert count(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}') == 0
    assert count(b'data: {"choices": [], "usage": {"completion_tokens": 300}}') == 0
    assert count(b"data: [DONE]") == 0
    assert count(b'data: {"error": {"message": "boom"}}') == ERROR
    assert APIS["completions"].count(b'data: {"choices": [{"text": "fair", "index": 0}]}') == 4


def test_tgi_events_count_one_character_each_and_not_the_special_ones():
    count = APIS["tgi"].count
    assert count(b'data: {"token": {"id": 5, "text": "a", "logprob": -1.0, "special": false}}') == 1
    assert count(b'data: {"token": {"id": 0, "text": "", "special":true}}') == 0
    assert count(b'data: {"error": "boom", "error_type": "generation"}') == ERROR


def test_the_completions_prompt_is_the_chat_message_as_the_bundled_model_renders_it():
    template = (ROOT / "models" / "shakespeare-gpt" / "chat_template.jinja").read_text(encoding="utf-8")
    chat, completions = APIS["chat"].body("m", 300, 1), APIS["completions"].body("m", 300, 1)
    rendered = ImmutableSandboxedEnvironment().from_string(template).render(
        messages=chat["messages"], add_generation_prompt=True)
    assert rendered == completions["prompt"]
    assert chat["max_completion_tokens"] == completions["max_tokens"] and chat["stop"] == completions["stop"]


def measured(api: str, chars: int, first_ms: list[float]) -> Level:
    return Level(32, api, chars=chars, seconds=1.0, first=[ms / 1000 for ms in first_ms])


def test_the_summary_compares_each_api_with_the_first_in_the_same_repeat():
    levels = [measured("completions", 1000, [10, 20, 30]), measured("chat", 900, [12, 22, 32]),
              measured("chat", 1100, [10, 20, 30]), measured("completions", 1000, [11, 21, 31])]
    lines = summary(levels)
    assert lines[2].startswith("| 32 | completions | 1,000 (1,000 to 1,000) | 20.5 (20.0 to 21.0) |")
    assert lines[3].startswith("| 32 | chat | 1,000 (900 to 1,100) | 21.0 (20.0 to 22.0) |")
    assert lines[3].endswith("| 1.00 (0.90 to 1.10) | 0.5 (-1.0 to 2.0) | 0.90; +2.0, 1.10; -1.0 |")
