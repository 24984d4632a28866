"""Screenshots of the playground: after a finished generation with the bundled default model, its
characters shaded by how sure the model was and one character's alternatives open; the Chat
view after two exchanges with it; and the Train view after a job.

    python bench/playground_screenshot.py [--out docs/playground.png] [--chat-out docs/playground-chat.png]
                                          [--train-out docs/playground-train.png] [--train-only]
                                          [--chars 600] [--seed 1]

Starts `charlm serve` on the bundled models (a free loopback port), opens the page in Debian's
headless Chromium through Playwright, generates from "ROMEO:" with the shading off and then on,
and saves the page as a PNG. Prints what the page showed each time (time to first character,
characters per second) next to the same request streamed straight from the server, to see what
the browser's share of the time is, and what the shading costs. Then says two lines as ROMEO in
the Chat view, shakespeare-gpt answering as JULIET in its play, and saves that page too.

The Train view's needs a server with training on: a second `charlm serve` (CHARLM_TRAINING=1, a
scratch data and models directory holding shakespeare-gpt), where shakespeare-gpt first writes a
text to train on (8 x 4,000 characters from "ROMEO:", so nothing outside the repository is needed);
the page uploads it and trains gpt-tiny on it for TRAIN_STEPS steps, and the window is saved once
the job succeeded. `--train-only` makes that screenshot alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, sync_playwright
from spawned import BENCH_ADMIN_KEY, spawned_server  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.service.browser import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402 (the tests' browser settings)

PROMPT = "ROMEO:"
CHAT_LINES = ("Good morrow, gentle lady. What news from the court?", "Then tell me of the king, and of his son.")
TRAIN_STEPS = 800
TRAIN_SETTINGS = {"eval_interval": 100, "eval_iters": 10, "sample_chars": 160}


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


def training_text(url: str, seed: int) -> str:
    """What shakespeare-gpt writes from PROMPT, 8 x 4,000 characters: a text to train on."""
    body = {"model": "shakespeare-gpt", "prompt": PROMPT, "max_tokens": 4000, "n": 8, "seed": seed,
            "temperature": 0.8}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return "\n\n".join(PROMPT + choice["text"] for choice in response.json()["choices"])


def train(url: str, out: Path, seed: int) -> str:
    """Train gpt-tiny on shakespeare-gpt's text in the Train view and save the window; the job's status line."""
    text = training_text(url, seed)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        poll(page, "document.body.dataset.models === 'loaded'")
        page.check("#view-train")
        page.fill("#admin-key", BENCH_ADMIN_KEY)
        file = {"name": "shakespeare-gpt-wrote.txt", "mimeType": "text/plain", "buffer": text.encode()}
        page.set_input_files("#train-file", files=[file])
        page.select_option("#train-preset", "gpt-tiny")
        page.fill("#train-budget", str(TRAIN_STEPS))
        page.select_option("#train-budget-unit", "max_iters")
        page.fill("#train-suffix", "echo")
        page.click("#train-advanced summary")
        page.fill("#train-settings", "\n".join(f"{key}={value}" for key, value in TRAIN_SETTINGS.items()))
        page.click("#train-start")
        poll(page, "['succeeded', 'failed', 'cancelled'].includes(document.getElementById('training').dataset.status)",
             timeout=1800)
        page.screenshot(path=str(out))
        status = page.text_content("#train-status") or ""
        browser.close()
    return status


def train_screenshot(out: Path, seed: int) -> str:
    """`train` on a server of its own: training on, shakespeare-gpt alone in a scratch models directory."""
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models"
        shutil.copytree(ROOT / "models" / "shakespeare-gpt", models / "shakespeare-gpt")
        os.environ.update(CHARLM_TRAINING="1", CHARLM_DATA_DIR=str(Path(scratch) / "data"))
        with spawned_server("--models-dir", str(models), "--default-model", "shakespeare-gpt") as url:
            return train(url, out, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "playground.png")
    parser.add_argument("--chat-out", type=Path, default=ROOT / "docs" / "playground-chat.png")
    parser.add_argument("--train-out", type=Path, default=ROOT / "docs" / "playground-train.png")
    parser.add_argument("--train-only", action="store_true", help="make the Train view's screenshot alone")
    parser.add_argument("--chars", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.train_only:
        print(f"saved {args.train_out}: {train_screenshot(args.train_out, args.seed)}")
        return
    with spawned_server() as url:
        stats = screenshot(url, args.out, args.chat_out, args.chars, args.seed)
        first_ms, rate = direct_stream(url, args.chars, args.seed)
    print(f"saved {args.out} and {args.chat_out}")
    for shaded, shown in stats.items():
        print(f"page, shading {'on ' if shaded else 'off'}: first character {shown['first']}, {shown['rate']} "
              f"characters/s, {shown['count']} characters, {shown['bpc']} bits/char, perplexity {shown['ppl']}")
    print(f"direct: first character {first_ms:.0f} ms, {rate:.0f} characters/s")
    print(f"saved {args.train_out}: {train_screenshot(args.train_out, args.seed)}")


if __name__ == "__main__":
    main()
