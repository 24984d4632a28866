"""Screenshots of the playground: after a finished generation with the bundled default model, its
characters shaded by how sure the model was and one character's alternatives open; and the Chat
view after two exchanges with it.

    python bench/playground_screenshot.py [--out docs/playground.png] [--chat-out docs/playground-chat.png]
                                          [--chars 600] [--seed 1]

Starts `charlm serve` on the bundled models (a free loopback port), opens the page in Debian's
headless Chromium through Playwright, generates from "ROMEO:" with the shading off and then on,
and saves the page as a PNG. Prints what the page showed each time (time to first character,
characters per second) next to the same request streamed straight from the server, to see what
the browser's share of the time is, and what the shading costs. Then says two lines as ROMEO in
the Chat view, shakespeare-gpt answering as JULIET, and saves that page too. Where shakespeare-gpt
has no chat template yet, the server runs on a copy of the bundled models in which it has the play
template and a speech's end as its stop, as `charlm train --chat-template` would give it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, sync_playwright
from spawned import spawned_server  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.service.browser import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402 (the tests' browser settings)

PROMPT = "ROMEO:"
MODELS = ROOT / "models"
CHAT_MODEL = "shakespeare-gpt"  # the server's default: the page picks it
CHAT_LINES = ("Good morrow, gentle lady. What news from the court?", "Then tell me of the king, and of his son.")
PLAY_STOP = '{"stop_strings": ["\\n\\n"]}\n'  # a speech ends at the blank line


def poll(page: Page, expression: str, timeout: float = 300) -> None:
    """Poll a script on the page (its Content-Security-Policy rules out wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        page.wait_for_timeout(50)


def direct_stream(url: str, chars: int, seed: int) -> tuple[float, float]:
    """Time to first character (ms) and characters per second of the same request, without a browser."""
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": chars, "temperature": 0.8, "top_k": 0,
                                             "top_p": 1, "seed": seed}}
    sent = time.perf_counter()
    first = last = None
    count = 0
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and not json.loads(line[5:])["token"]["special"]:
                last = time.perf_counter()
                first = first or last
                count += 1
    assert first is not None and last is not None
    return (first - sent) * 1000, (count - 1) / (last - first)


def generate(page: Page, chars: int, seed: int, shaded: bool) -> dict[str, str]:
    """One generation in the page; what its statistics showed."""
    page.fill("#prompt", PROMPT)
    page.fill("#max-new-tokens", str(chars))
    page.fill("#seed", str(seed))
    page.set_checked("#show-probs", shaded)
    page.click("#generate")
    poll(page, "document.querySelector('.output')?.dataset.status === 'finished'")
    names = ("first", "rate", "count", "bpc", "ppl")
    return {name: page.text_content(f".output .stat-{name}") or "" for name in names}


@contextlib.contextmanager
def chat_ready_models() -> Iterator[Path]:
    """The bundled models where CHAT_MODEL ships its chat template; else a copy of them in which it
    has the play template and the play's stop."""
    if (MODELS / CHAT_MODEL / "chat_template.jinja").exists():
        yield MODELS
        return
    with tempfile.TemporaryDirectory() as temporary:
        models = Path(temporary) / "models"
        shutil.copytree(MODELS, models)
        shutil.copy(ROOT / "charlm" / "chat_templates" / "play.jinja", models / CHAT_MODEL / "chat_template.jinja")
        (models / CHAT_MODEL / "generation_config.json").write_text(PLAY_STOP, encoding="utf-8")
        print(f"{CHAT_MODEL} has no chat template: serving a copy of the bundled models with the play's")
        yield models


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    page.goto(url)
    poll(page, "document.body.dataset.models === 'loaded'")
    return page


def chat(page: Page, seed: int) -> None:
    """Say CHAT_LINES as ROMEO in the Chat view, each reply shaded, and open one character's alternatives."""
    page.check("#view-chat")
    page.check("#show-probs")
    page.fill("#seed", str(seed))
    for said, line in enumerate(CHAT_LINES, start=1):
        page.fill("#chat-message", line)
        page.click("#send")
        poll(page, "[...document.querySelectorAll('#chat-turns .reply')]"
                   f".filter(reply => reply.dataset.status === 'finished').length === {said}")
    page.locator("#chat-turns .reply").last.locator(".generated > span").nth(12).hover()


def screenshot(url: str, out: Path, chat_out: Path, chars: int, seed: int) -> dict[bool, dict[str, str]]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = open_page(browser, url)
        stats = {shaded: generate(page, chars, seed, shaded) for shaded in (False, True)}
        page.locator(".output .generated > span").nth(min(40, chars - 1)).hover()  # its alternatives
        page.screenshot(path=str(out))
        page = open_page(browser, url)
        chat(page, seed)
        page.screenshot(path=str(chat_out), full_page=True)  # the Chat view's form is taller than the window
        browser.close()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "playground.png")
    parser.add_argument("--chat-out", type=Path, default=ROOT / "docs" / "playground-chat.png")
    parser.add_argument("--chars", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with chat_ready_models() as models, spawned_server("--models-dir", str(models)) as url:
        stats = screenshot(url, args.out, args.chat_out, args.chars, args.seed)
        first_ms, rate = direct_stream(url, args.chars, args.seed)
    print(f"saved {args.out} and {args.chat_out}")
    for shaded, shown in stats.items():
        print(f"page, shading {'on ' if shaded else 'off'}: first character {shown['first']}, {shown['rate']} "
              f"characters/s, {shown['count']} characters, {shown['bpc']} bits/char, perplexity {shown['ppl']}")
    print(f"direct: first character {first_ms:.0f} ms, {rate:.0f} characters/s")


if __name__ == "__main__":
    main()
