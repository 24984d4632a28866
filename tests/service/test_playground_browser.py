"""The playground in a real browser (headless Chromium) against the real server on a loopback port.

Skipped when Chromium or Playwright is missing; `.ci/run` installs Chromium so that CI runs them."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.browser import LONG_STREAM_TIMEOUT_S, open_page, wait_for_outputs, wait_for_script
from tests.service.helpers import LONG, cancelled_count, engine_of, live_server, wait_until

BUNDLED_MODELS = Path(__file__).resolve().parents[2] / "models"
KEY = "s3cret"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def guarded_server(tiny_models: Path) -> Iterator[tuple[str, Any]]:
    """An API key, and room for one sequence per model: a second one is refused (429)."""
    with live_server(tiny_models, api_key=KEY, max_batch_size=1, max_queued=0, max_new_tokens=LONG) as running:
        yield running


def wait_for_characters(page: Any, count: int) -> None:
    wait_for_script(page, "(count) => document.querySelector('.output .generated')?.textContent.length > count",
                    count)


def generated_length(page: Any) -> int:
    return int(page.evaluate("document.querySelector('.output .generated')?.textContent.length ?? 0"))


def test_the_page_loads_offline_and_lists_the_bundled_models(browser):
    with live_server(BUNDLED_MODELS, default_model="shakespeare-gpt") as (base, _):
        listed = [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]]
        with open_page(browser, base, prompt="ROMEO:") as page:
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.reload()
            page.wait_for_selector("body[data-models=loaded]")
            options = page.locator("#model option").evaluate_all("options => options.map(o => o.value)")
            assert sorted(options) == sorted(listed) and "pushkin-lstm-attention" in options
            assert page.input_value("#model") == "shakespeare-gpt"  # the server's default
            info = page.text_content("#model-info")
            assert "gpt" in info and "818,048 parameters" in info and "context 128" in info
            page.select_option("#model", "shakespeare-lstm")
            assert "unbounded context" in page.text_content("#model-info")
    assert requested and all(url.startswith(f"{base}/") for url in requested)  # nothing from elsewhere


def test_models_on_standby_are_listed_marked_and_load_when_used(browser, tiny_models):
    """Under CHARLM_MAX_LOADED the pickers list the models not loaded yet, say so, and a generation
    with one loads it."""
    with live_server(tiny_models, max_loaded=1, models_poll_s=0) as (base, _), \
            open_page(browser, base, prompt="the") as page:
        page.wait_for_selector("body[data-models=loaded]")
        labels = page.locator("#model option").evaluate_all("options => options.map(o => o.textContent)")
        assert "tiny-gpt (gpt)" in labels and "tiny-lstm (not loaded yet, standby)" in labels
        page.select_option("#model", "tiny-lstm")
        assert "not loaded: it loads when used" in page.text_content("#model-info")
        page.fill("#max-new-tokens", "20")
        page.click("#generate")
        wait_for_outputs(page, 1, "finished", timeout=LONG_STREAM_TIMEOUT_S)
        assert wait_until(lambda: "lstm · " in (page.text_content("#model-info") or ""), timeout=30)  # followed


def test_a_generation_streams_character_by_character(page):
    chars = 1200  # 4-7 s at the page's rate here: a tenth of the wait, or less
    page.fill("#max-new-tokens", str(chars))
    page.fill("#seed", "003")  # leading zeros: still the integer 3
    page.click("#generate")
    growing, live_rates = [], set()
    deadline = time.monotonic() + LONG_STREAM_TIMEOUT_S
    while page.get_attribute(".output", "data-status") in ("waiting", "streaming") and time.monotonic() < deadline:
        growing.append(generated_length(page))
        live_rates.add(page.text_content(".output .stat-rate"))
    [panel] = wait_for_outputs(page, 1, "finished", timeout=LONG_STREAM_TIMEOUT_S)
    assert len({n for n in growing if 0 < n < chars}) >= 3, "the text did not grow in steps"
    assert growing == sorted(growing)
    assert live_rates - {"", None}, "no live characters/s while streaming"
    assert generated_length(page) == chars
    assert panel.locator(".stat-count").text_content() == str(chars)
    assert panel.locator(".stat-finish").text_content() == "length"
    assert panel.locator(".stat-seed").text_content() == "3"
    assert panel.locator(".stat-first").text_content().endswith(" ms")


def test_stop_cancels_the_sequence_on_the_server(page, server):
    base, app = server
    before = cancelled_count(base)
    page.fill("#max-new-tokens", str(LONG))
    page.click("#generate")
    wait_for_characters(page, 50)
    assert page.is_enabled("#stop-button") and page.is_disabled("#generate")
    page.click("#stop-button")
    [panel] = wait_for_outputs(page, 1, "stopped")
    assert panel.locator(".stat-finish").text_content() == "stopped by you"
    assert wait_until(lambda: cancelled_count(base) == before + 1), "the server did not cancel the sequence"
    assert wait_until(lambda: engine_of(app, "tiny-gpt").active == 0), "the sequence stayed in the batch"
    assert page.is_enabled("#generate")


def test_a_prompt_with_unknown_characters_shows_the_error_next_to_the_prompt(page):
    page.fill("#prompt", "the ☃ king")
    page.click("#generate")
    [panel] = wait_for_outputs(page, 1, "failed")
    error = page.locator("#prompt-error")
    assert error.is_visible()
    assert "☃" in error.text_content() and "not in the model's vocabulary" in error.text_content()
    assert page.get_attribute("#prompt", "aria-invalid") == "true"
    assert "☃" in panel.locator(".output-error").text_content()


def test_invalid_parameters_show_their_errors_next_to_their_controls(page):
    page.fill("#temperature", "-1")
    page.fill("#top-p", "1.5")
    page.fill("#repetition-penalty", "0")
    page.fill("#min-p", "2")
    page.fill("#seed", "abc")
    page.click("#generate")
    wait_for_outputs(page, 1, "failed")
    assert "greater than or equal to 0" in page.text_content("#temperature-error")
    assert "less than or equal to 1" in page.text_content("#top-p-error")
    assert "greater than or equal to 0.01" in page.text_content("#repetition-penalty-error")
    assert "less than or equal to 1" in page.text_content("#min-p-error")
    assert "valid integer" in page.text_content("#seed-error")
    for control in ("temperature", "top-p", "repetition-penalty", "min-p", "seed"):
        assert page.get_attribute(f"#{control}", "aria-invalid") == "true"
    assert page.is_hidden("#prompt-error") and page.is_hidden("#generate-error")
    page.fill("#temperature", "0.5")  # the next attempt starts clean
    page.fill("#top-p", "1")
    page.fill("#repetition-penalty", "1")
    page.fill("#min-p", "0")
    page.fill("#seed", "")
    page.fill("#max-new-tokens", "5")
    page.click("#generate")
    wait_for_outputs(page, 1, "finished")
    assert page.is_hidden("#temperature-error") and page.get_attribute("#temperature", "aria-invalid") is None


def test_compare_mode_sends_the_same_prompt_and_seed_to_two_models(page, server):
    seed = 2**53 + 1  # past what a JavaScript number holds exactly
    page.check("#compare")
    page.select_option("#model-b", "tiny-lstm")
    page.fill("#prompt", "the king")
    page.fill("#seed", str(seed))
    page.fill("#max-new-tokens", "60")
    page.fill("#stop", "")
    page.click("#generate")
    panels = wait_for_outputs(page, 2, "finished")
    assert [p.get_attribute("data-model") for p in panels] == ["tiny-gpt", "tiny-lstm"]
    for panel in panels:
        assert panel.locator(".stat-seed").text_content() == str(seed)
        parameters = {"max_new_tokens": 60, "temperature": 0.8, "top_k": 0, "top_p": 1, "seed": seed}
        body = {"inputs": "the king", "model": panel.get_attribute("data-model"), "parameters": parameters}
        expected = httpx.post(f"{server[0]}/generate", json=body, timeout=60).json()["generated_text"]
        assert panel.locator(".generated").text_content() == expected


def test_stop_strings_typed_with_escapes_end_the_text_before_them(page, server):
    greedy = {"inputs": "the king", "parameters": {"max_new_tokens": 200, "temperature": 0}}
    text = httpx.post(f"{server[0]}/generate", json=greedy, timeout=60).json()["generated_text"]
    at = max(text.find("\n"), 1)  # a stop string across a line end when the text has one
    stop = text[at - 1 : at + 1]
    page.fill("#temperature", "0")
    page.fill("#max-new-tokens", "200")
    page.fill("#stop", stop.replace("\\", "\\\\").replace("\n", "\\n") + "\nnever there")
    page.click("#generate")
    [panel] = wait_for_outputs(page, 1, "finished")
    assert panel.locator(".stat-finish").text_content() == "stop_sequence"
    assert panel.locator(".generated").text_content() == text[: text.index(stop)]


def test_every_control_is_labelled_keyboard_usable_and_fits_a_phone(browser, server):
    with open_page(browser, server[0], viewport=PHONE) as page:
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('input, select, textarea')].filter(c => !c.labels.length).map(c => c.id)"
        )
        assert unlabelled == []
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.fill("#max-new-tokens", str(LONG))
        page.focus("#prompt")
        page.keyboard.press("Control+Enter")
        wait_for_characters(page, 10)
        page.keyboard.press("Escape")
        wait_for_outputs(page, 1, "stopped")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_the_api_key_field_unlocks_a_guarded_server(browser, guarded_server):
    with open_page(browser, guarded_server[0], models_state="failed") as page:
        assert "API key" in page.text_content("#api-key-error")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Tab")
        page.wait_for_selector("body[data-models=loaded]")
        assert page.is_hidden("#api-key-error")
        page.fill("#max-new-tokens", "5")
        page.click("#generate")
        wait_for_outputs(page, 1, "finished")


def test_a_full_queue_is_reported_below_the_buttons(browser, guarded_server):
    base, _ = guarded_server
    body = {"inputs": "the", "parameters": {"max_new_tokens": LONG}}
    headers = {"Authorization": f"Bearer {KEY}"}
    with open_page(browser, base, models_state="failed") as page, httpx.Client(timeout=60) as client:
        page.fill("#api-key", KEY)
        page.press("#api-key", "Tab")
        page.wait_for_selector("body[data-models=loaded]")
        with client.stream("POST", f"{base}/generate_stream", json=body, headers=headers) as occupying:
            lines = occupying.iter_lines()  # kept: a closed iterator would close the stream
            assert next(line for line in lines if line.startswith("data:"))
            page.click("#generate")  # the model's one row is taken and its queue holds none
            wait_for_outputs(page, 1, "failed")
        assert "too many requests" in page.text_content("#generate-error")
        assert page.is_hidden("#prompt-error")


def test_the_repetition_penalty_and_min_p_reach_the_server(page, server):
    """The page's text with a repetition penalty and min-p equals /generate's with the same settings."""
    page.fill("#prompt", "the king")
    page.fill("#seed", "5")
    page.fill("#max-new-tokens", "80")
    page.fill("#repetition-penalty", "1.3")
    page.fill("#min-p", "0.1")
    page.fill("#stop", "")
    page.click("#generate")
    [panel] = wait_for_outputs(page, 1, "finished")
    parameters = {"max_new_tokens": 80, "temperature": 0.8, "top_k": 0, "top_p": 1, "seed": 5,
                  "repetition_penalty": 1.3, "min_p": 0.1}
    expected = httpx.post(f"{server[0]}/generate", json={"inputs": "the king", "parameters": parameters},
                          timeout=60).json()["generated_text"]
    assert panel.locator(".generated").text_content() == expected
    plain = {**parameters, "repetition_penalty": 1.0, "min_p": 0.0}
    assert httpx.post(f"{server[0]}/generate", json={"inputs": "the king", "parameters": plain},
                      timeout=60).json()["generated_text"] != expected


def test_a_model_added_while_the_page_is_open_appears_in_the_picker(browser, tiny_models, tmp_path):
    """The page asks for the model list every few seconds; the server polls its directory."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-gpt", models / "tiny-gpt")
    with live_server(models, models_poll_s=0.2) as (base, _), open_page(browser, base) as page:
        page.wait_for_selector("#model-card-details:not([hidden])")
        assert page.text_content("#model-card") == (models / "tiny-gpt" / "README.md").read_text()
        staging = models / ".mine.partial"
        shutil.copytree(tiny_models / "tiny-lstm", staging)
        staging.rename(models / "mine")  # published in one rename, as charlm train does
        wait_for_script(page, "() => [...document.querySelectorAll('#model option')].some(o => o.value === 'mine')")
        assert page.input_value("#model") == "tiny-gpt"  # the choice stays while its model is served
        page.select_option("#model", "mine")
        wait_for_script(page, "() => document.querySelector('#model-card').textContent.startsWith('# tiny-lstm')")
