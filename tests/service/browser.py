"""Debian's Chromium, headless, driven by Playwright: the playground tests' browser, and the page
helpers those tests share."""

from __future__ import annotations

import contextlib
import importlib
import math
import shutil
from collections.abc import Iterator
from typing import Any

from tests.helpers import missing_tool, wait_until

CHROMIUM = "/usr/bin/chromium"
# The page renders 165-305 characters/s on the 2-core development machine (docs/playground.md):
# a long stream in a test takes at most a tenth of this, so a loaded machine still has margin.
LONG_STREAM_TIMEOUT_S = 120
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright browser on the system Chromium; without one the calling test is skipped, or
    fails under CI (`tests.helpers.missing_tool`)."""
    if shutil.which(CHROMIUM) is None:
        missing_tool(f"no Chromium at {CHROMIUM} (.ci/install-browser installs it)")
    try:
        sync_api = importlib.import_module("playwright.sync_api")
    except ImportError:
        missing_tool("playwright is not installed (it is in the dev extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(
    browser: Any, base: str, models_state: str = "loaded", prompt: str = "the king", **context: Any
) -> Iterator[Any]:
    """A fresh page (new profile) on the playground, once its model list has loaded (or failed),
    with a prompt in the tiny models' alphabet; a script error on the page fails the test."""
    browser_context = browser.new_context(**context)
    page = browser_context.new_page()
    script_errors: list[Exception] = []
    page.on("pageerror", lambda error: script_errors.append(error))
    try:
        page.goto(base)
        page.wait_for_selector(f"body[data-models={models_state}]")
        page.fill("#prompt", prompt)
        yield page
    finally:
        browser_context.close()
    assert not script_errors


def bucket(logprob: float) -> int:
    """The shade the page gives a character of this log-probability (probabilities.js's `bucket`)."""
    return min(7, math.floor((1 - math.exp(logprob)) * 8))


def wait_for_script(page: Any, expression: str, arg: Any = None, timeout: float = 60) -> None:
    """Poll a script until it is true. (Playwright's wait_for_function compiles its script with
    `new Function`, which the page's Content-Security-Policy forbids, as it should.)"""
    assert wait_until(lambda: page.evaluate(expression, arg), timeout), f"never true: {expression}"


def wait_for_outputs(page: Any, count: int, *statuses: str, timeout: float = 60) -> list[Any]:
    """Wait until `count` output panels have all ended in one of `statuses`."""
    wait_for_script(
        page,
        "([count, statuses]) => { const panels = [...document.querySelectorAll('.output')];"
        " return panels.length === count && panels.every(p => statuses.includes(p.dataset.status)); }",
        [count, list(statuses)],
        timeout,
    )
    return page.locator(".output").all()
