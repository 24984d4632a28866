"""The playground's view of how sure the model was, in headless Chromium against the real server:
shades, alternatives on hover and on keyboard focus, summary numbers, branching."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.service.browser import LONG_STREAM_TIMEOUT_S, bucket, wait_for_outputs

SETTINGS = {"temperature": 0.8, "top_k": 0, "top_p": 1, "repetition_penalty": 1, "min_p": 0, "top_n_tokens": 5}


def generate_in_page(page: Any, chars: int, seed: int, shaded: bool = True, timeout: float = 60) -> Any:
    page.fill("#seed", str(seed))
    page.fill("#max-new-tokens", str(chars))
    page.fill("#stop", "")
    if shaded:
        page.check("#show-probs")
    page.click("#generate")
    [panel] = wait_for_outputs(page, 1, "finished", timeout=timeout)
    return panel


def api_tokens(base: str, chars: int, seed: int) -> list[dict[str, Any]]:
    """The same generation through /generate, with details."""
    parameters = {**SETTINGS, "max_new_tokens": chars, "seed": seed, "details": True}
    body = {"inputs": "the king", "parameters": parameters}
    details = httpx.post(f"{base}/generate", json=body, timeout=60).json()["details"]
    return [{**t, "top": top} for t, top in zip(details["tokens"], details["top_tokens"], strict=True)]


def shown_percent(text: str) -> float:
    return float(text.rstrip("%"))


def test_the_shades_follow_the_returned_logprobs(page, server):
    panel = generate_in_page(page, 150, seed=7)
    spans = panel.locator(".generated > span")
    shades = spans.evaluate_all("spans => spans.map(s => Number(s.dataset.b))")
    tokens = api_tokens(server[0], 150, 7)
    assert panel.locator(".generated").text_content() == "".join(t["text"] for t in tokens)
    assert shades == [bucket(t["logprob"]) for t in tokens]
    strongest = spans.nth(shades.index(max(shades)))
    background = "el => getComputedStyle(el).backgroundColor"
    assert strongest.evaluate(background) != "rgba(0, 0, 0, 0)"  # shaded
    page.uncheck("#show-probs")
    assert strongest.evaluate(background) == "rgba(0, 0, 0, 0)" and page.is_hidden("#probs-legend")
    mean = -sum(t["logprob"] for t in tokens) / len(tokens)
    assert float(panel.locator(".stat-bpc").text_content()) == pytest.approx(mean / math.log(2), abs=1e-3)
    assert float(panel.locator(".stat-ppl").text_content()) == pytest.approx(math.exp(mean), abs=1e-2)


def alternatives_shown(panel: Any) -> list[tuple[str, float]]:
    rows = panel.locator(".alternatives .alternative").all()
    return [(row.locator(".alternative-char").text_content(), shown_percent(row.locator(".alternative-p")
                                                                             .text_content())) for row in rows]


def expected_alternatives(token: dict[str, Any]) -> list[tuple[str, float]]:
    visible = {" ": "␣", "\n": "⏎", "\t": "⇥"}
    return [(visible.get(t["text"], t["text"]), 100 * math.exp(t["logprob"])) for t in token["top"]]


def assert_same_alternatives(shown: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [c for c, _ in shown] == [c for c, _ in expected]
    for (_, p_shown), (_, p_expected) in zip(shown, expected, strict=True):
        assert p_shown == pytest.approx(p_expected, rel=0.06, abs=0.06)  # as rounded on the page


def test_hover_and_keyboard_focus_show_the_alternatives_the_api_gives(page, server):
    panel = generate_in_page(page, 60, seed=3)
    tokens = api_tokens(server[0], 60, 3)
    panel.locator(".generated > span").nth(10).hover()
    assert panel.locator(".alternatives").is_visible()
    assert_same_alternatives(alternatives_shown(panel), expected_alternatives(tokens[10]))
    page.focus(".output-text")
    for _ in range(4):  # onto the first character, then three more
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    assert "at 4:" in panel.locator(".alternatives-title").text_content()
    assert page.evaluate("document.activeElement.classList.contains('alternative')")  # focus in the list
    assert page.get_attribute(".output-text", "aria-activedescendant").endswith("-c3")
    assert_same_alternatives(alternatives_shown(panel), expected_alternatives(tokens[3]))
    page.keyboard.press("Escape")
    assert panel.locator(".alternatives").is_hidden()
    assert page.evaluate("document.activeElement.classList.contains('output-text')")


def test_branching_continues_from_the_alternative_picked(page, server):
    panel = generate_in_page(page, 40, seed=5)
    text = panel.locator(".generated").text_content()
    panel.locator(".generated > span").nth(6).click()
    choices = panel.locator(".alternatives .alternative")
    other = next(i for i in range(choices.count()) if "chosen" not in choices.nth(i).get_attribute("class"))
    alternative = choices.nth(other).get_attribute("data-text")
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/generate_stream") else None)
    choices.nth(other).click()
    [new_panel] = wait_for_outputs(page, 1, "finished")
    expected = "the king" + text[:6] + alternative
    assert page.input_value("#prompt") == expected and sent[-1]["inputs"] == expected
    assert new_panel.locator(".echo").text_content() == expected


def test_two_thousand_shaded_characters_stream_to_the_end(page):
    chars = 2000  # 7-12 s at the page's rate here: a tenth of the wait, or less
    panel = generate_in_page(page, chars, seed=1, timeout=LONG_STREAM_TIMEOUT_S)
    assert panel.locator(".generated > span").count() == chars
    assert int(panel.locator(".stat-count").text_content()) == chars
