"""The playground's Constrain field and its "Score the text" mode, in headless Chromium against the
real server: what the page shows is what the API answers."""

from __future__ import annotations

import math
import re
from typing import Any

import httpx

from tests.service.browser import bucket, wait_for_outputs, wait_for_script

REGEX = "(king|queen|lord)( of the (king|queen))?"


def constrain(page: Any, kind: str, value: str) -> None:
    page.select_option("#constrain-kind", kind)
    page.fill("#constrain", value)


def test_the_constrain_field_keeps_the_output_to_a_regular_expression(page, server):
    constrain(page, "regex", REGEX)
    page.fill("#seed", "4")
    page.fill("#max-new-tokens", "60")
    page.fill("#prompt", "the ")
    page.click("#generate")
    [panel] = wait_for_outputs(page, 1, "finished")
    text = panel.locator(".generated").text_content()
    assert re.fullmatch(REGEX, text) and panel.locator(".stat-finish").text_content() == "eos_token"
    parameters = {"max_new_tokens": 60, "seed": 4, "temperature": 0.8, "top_k": 0, "top_p": 1, "min_p": 0,
                  "repetition_penalty": 1, "grammar": {"type": "regex", "value": REGEX}}
    answer = httpx.post(f"{server[0]}/generate", json={"inputs": "the ", "parameters": parameters}, timeout=60)
    assert answer.json()["generated_text"] == text


def test_a_constraint_the_model_cannot_follow_is_shown_next_to_the_field(page):
    constrain(page, "regex", "(king")
    page.click("#generate")
    page.wait_for_selector("#constrain-error:not([hidden])")
    assert "does not compile" in page.text_content("#constrain-error")
    assert page.get_attribute("#constrain", "aria-invalid") == "true"
    constrain(page, "json", '{"type": "object", "properties": {"age": {"type": "integer"}}}')
    page.click("#generate")
    wait_for_script(page, "() => document.querySelector('#constrain-error').textContent.includes('does not have')")
    assert "'{' (U+007B)" in page.text_content("#constrain-error")  # the tiny models have no braces
    constrain(page, "regex", "")
    page.click("#generate")
    assert "enter a regular expression or a JSON schema" in page.text_content("#constrain-error")


def api_scores(base: str, texts: list[str]) -> list[list[float | None]]:
    body = {"model": "tiny-gpt", "prompt": texts, "echo": True, "logprobs": 5, "max_tokens": 0}
    choices = httpx.post(f"{base}/v1/completions", json=body, timeout=60).json()["choices"]
    return [c["logprobs"]["token_logprobs"] for c in sorted(choices, key=lambda c: c["index"])]


def test_scoring_a_text_shades_it_and_counts_unknown_characters_apart(page, server):
    text = "the king ☃ я помню"  # English and Russian the model saw, and a snowman it never did
    page.fill("#prompt", text)
    page.click("#score")
    [panel] = wait_for_outputs(page, 1, "finished")
    spans = panel.locator(".generated > span")
    shown = spans.evaluate_all("spans => spans.map(s => [s.textContent, s.dataset.b ?? null, s.className])")
    assert "".join(char for char, _, _ in shown) == text
    before, after = api_scores(server[0], ["the king ", " я помню"])
    expected = [*before, None, *after]  # the snowman breaks the text: what follows is scored afresh
    for (char, shade, kind), logprob in zip(shown, expected, strict=True):
        if logprob is None:
            assert shade is None and kind == ("unknown" if char == "☃" else "unscored")
        else:
            assert shade == str(bucket(logprob))
    assert panel.locator(".stat-unknown").text_content() == "1"
    assert panel.locator(".stat-count").text_content() == f"{len(text) - 3} scored of {len(text)}"
    logprobs = [lp for lp in expected if lp is not None]
    mean = -sum(logprobs) / len(logprobs)
    assert abs(float(panel.locator(".stat-bpc").text_content()) - mean / math.log(2)) < 1e-3
    spans.nth(5).hover()  # "k" of "king": its alternatives, as for generated text
    assert panel.locator(".alternatives .alternative").count() == 5
