"""Shared test helpers: a small generated corpus and tiny real training runs."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from training.session import RunSpec
from training.trainer import train

WORDS = ["the", "king", "and", "queen", "shall", "speak", "of", "love", "war", "night", "my", "lord"]
CYRILLIC = ["я", "помню", "чудное", "мгновенье", "передо", "мной", "явилась", "ты"]

# Tiny but complete settings per architecture: a few seconds of CPU each.
TINY = {
    "gpt": ("gpt-tiny", {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16}),
    "lstm": ("lstm", {"hidden_size": 32, "seq_len": 16, "batch_size": 8}),
    "lstm_attention": (
        "lstm-attention",
        {"hidden_size": 32, "n_embd": 16, "n_head": 2, "block_size": 8, "seq_len": 16, "batch_size": 8},
    ),
    "mingru": ("mingru", {"n_embd": 32, "hidden_size": 32, "n_layer": 2, "seq_len": 16, "batch_size": 8}),
}
TINY_RUN = {
    "max_iters": 60, "eval_interval": 30, "eval_iters": 4, "warmup_iters": 5, "lr": 5e-3, "sample_chars": 20,
}


def make_corpus(n_lines: int = 600, seed: int = 0) -> str:
    """Verse-like lines of English words, with some Russian ones, and punctuation."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = CYRILLIC if i % 5 == 4 else WORDS
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
        lines.append(line.capitalize() + rng.choice([",", ".", "!", ";"]))
    return "\n".join(lines) + "\n"


def make_json_corpus(n_lines: int = 500, seed: int = 0) -> str:
    """JSON records, one a line, of a person's name, age and whether they are alive (what the
    constrained-generation tests ask for), with the English words' letters."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        name = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2))).title()
        alive = rng.choice(["true", "false"])
        lines.append(f'{{"name": "{name}", "age": {rng.randint(1, 99)}, "alive": {alive}}}')
    return "\n".join(lines) + "\n"


SPEAKERS = ["ROMEO", "JULIET", "CHORUS", "NURSE", "MESSENGER"]


def make_play_corpus(n_speeches: int = 400, seed: int = 0) -> str:
    """A play as the Shakespeare corpus is written: speeches of `NAME:` and a few lines, a blank
    line between speeches (what charlm/chat_templates/play.jinja writes a chat as)."""
    rng = random.Random(seed)
    speeches = []
    for _ in range(n_speeches):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))).capitalize() + rng.choice(",.!;?")
                 for _ in range(rng.randint(1, 3))]
        speeches.append(f"{rng.choice(SPEAKERS)}:\n" + "\n".join(lines) + "\n")
    return "\n".join(speeches)


def train_tiny(architecture: str, data: Path, out: Path, overwrite: bool = False, **settings: object) -> Path:
    preset, overrides = TINY[architecture]
    spec = RunSpec(
        data=data, out=out, preset=preset, overrides={**overrides, **TINY_RUN, **settings},
        command="pytest", progress=False, device="cpu", overwrite=overwrite,
    )
    assert train(spec) is not None
    return out


def in_ci() -> bool:
    """Whether this run is CI's (`CI=true`, which `.ci/run` sets), where every tool the tests need is installed."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def missing_tool(message: str) -> NoReturn:
    """A test cannot run without a tool that CI installs: under CI this fails the test (a group of
    tests skipped there would leave CI green while testing nothing); elsewhere it skips, saying why."""
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(message)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def require_triton() -> None:
    """Skip the calling test without Triton (the dev extra installs it), but fail under CI, which
    installs it: a missing tool there must not pass for a skipped test."""
    from charlm import decode_kernel

    if decode_kernel.available() is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{decode_kernel.available()}; CI installs the dev extra, which brings it")
        pytest.skip(f"{decode_kernel.available()} (the dev extra installs it)")


def take(items: queue.Queue, deadline: float, what: str) -> Any:
    """The next item of `items`; fails, naming `what` was awaited, once `deadline` (a
    time.monotonic() value) has passed without one."""
    try:
        return items.get(timeout=max(deadline - time.monotonic(), 0.001))
    except queue.Empty:
        raise AssertionError(f"timed out waiting for {what}") from None


def stop_group(process: subprocess.Popen[Any], how: signal.Signals, wait_s: float) -> None:
    """Ask a process that leads its own session to stop (`how`: its clean stop), and kill its whole
    group if it has not ended within `wait_s` (the children it started included)."""
    process.send_signal(how)
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
