"""Train while serving: `charlm serve` as a process, polling its models directory, while the tests
train, replace, half-copy and remove models in it. These depend on timing (a poll, a model loading
in an engine process of its own): every wait is for a condition, with a generous limit because a
busy machine makes loads slow; none is a fixed sleep."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx

from charlm.checkpoint import WEIGHTS_FILE, weights_fingerprint
from tests.helpers import train_tiny, wait_until
from tests.service.helpers import publish_model, serve_process

LOAD_TIMEOUT_S = 120  # a poll, then a model loading and an engine process starting on a busy machine
HUGE = 1_000_000  # characters: a stream that runs until the test leaves it


class Stream:
    """A `/generate_stream` read in a thread: its response headers, its characters as they come."""

    def __init__(self, url: str, model: str, seed: int, chars: int):
        self.body = {"inputs": "the ", "model": model, "parameters": {"max_new_tokens": chars, "seed": seed}}
        self.url, self.chars = url, []  # type: ignore[var-annotated]
        self.headers: httpx.Headers | None = None
        self.finish_reason: str | None = None
        self.leave = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with httpx.stream("POST", f"{self.url}/generate_stream", json=self.body, timeout=120) as response:
            self.headers = response.headers
            for line in response.iter_lines():
                if self.leave.is_set():
                    return  # closing the connection cancels the sequence
                if line.startswith("data:"):
                    event = json.loads(line.removeprefix("data:"))
                    self.chars.append(event["token"]["text"])
                    if event["details"] is not None:
                        self.finish_reason = event["details"]["finish_reason"]

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def has(self, count: int) -> bool:
        return len(self.chars) >= count

    def stop(self) -> None:
        self.leave.set()
        self.thread.join(60)


def generated(url: str, model: str, seed: int, chars: int) -> httpx.Response:
    body = {"inputs": "the ", "model": model, "parameters": {"max_new_tokens": chars, "seed": seed}}
    return httpx.post(f"{url}/generate", json=body, timeout=120)


def statuses(url: str) -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = httpx.get(f"{url}/health", timeout=10).json()["models"]
    return models


def status_of(url: str, model: str) -> str | None:
    return statuses(url).get(model, {}).get("status")


def serve(models_dir: Path, *extra: str):  # type: ignore[no-untyped-def]
    return serve_process("--models-dir", str(models_dir), "--default-model", "tiny-gpt", "--models-poll-s", "0.3",
                         "--max-new-tokens", str(HUGE), *extra)


def test_a_model_trained_while_serving_is_served_and_other_streams_stay_identical(own_models, corpus_file):
    with serve(own_models) as server:
        server.wait_healthy()
        stream = Stream(server.url, "tiny-gpt", seed=11, chars=HUGE)
        try:
            assert wait_until(lambda: stream.has(50), timeout=60), server.output()
            train_tiny("lstm", corpus_file, own_models / "mine")  # charlm train's own way of writing
            # Training publishes each better checkpoint as it goes: wait for the last one to be served,
            # or a version served a moment before the final one could answer the request below.
            final = weights_fingerprint((own_models / "mine" / WEIGHTS_FILE).read_bytes())
            assert wait_until(lambda: statuses(server.url).get("mine", {}).get("version") == final,
                              LOAD_TIMEOUT_S), server.output()
            assert stream.thread.is_alive() and stream.finish_reason is None  # it ran all along
            response = generated(server.url, "mine", seed=1, chars=30)
            assert response.status_code == 200
            assert response.headers["x-charlm-model-version"] == statuses(server.url)["mine"]["version"]
            count = len(stream.chars)
            assert wait_until(lambda: stream.has(count + 200), timeout=60), "the stream stalled after the load"
        finally:
            stream.stop()
        received = stream.text
        assert generated(server.url, "tiny-gpt", seed=11, chars=len(received)).json()["generated_text"] == received


def test_a_model_replaced_during_streams_finishes_them_on_the_old_weights(own_models, tiny_models):
    """One batch slot: the first stream runs while the second waits in the old version's queue; both
    end on the old weights, after the new version is served."""
    with serve(own_models, "--max-batch-size", "1") as server:
        server.wait_healthy()
        old_version = statuses(server.url)["tiny-gpt"]["version"]
        running_expected = generated(server.url, "tiny-gpt", seed=5, chars=2000).json()["generated_text"]
        queued_expected = generated(server.url, "tiny-gpt", seed=6, chars=300).json()["generated_text"]
        running = Stream(server.url, "tiny-gpt", seed=5, chars=HUGE)
        try:
            assert wait_until(lambda: running.has(10), timeout=60), server.output()
            queued = Stream(server.url, "tiny-gpt", seed=6, chars=300)
            assert wait_until(lambda: statuses(server.url)["tiny-gpt"].get("queued") == 1, timeout=60), "never queued"
            publish_model(tiny_models / "tiny-lstm", own_models / "tiny-gpt")
            assert wait_until(lambda: statuses(server.url)["tiny-gpt"].get("version") not in (None, old_version),
                              LOAD_TIMEOUT_S), server.output()
            response = generated(server.url, "tiny-gpt", seed=5, chars=30)
            new_version = response.headers["x-charlm-model-version"]
            assert new_version not in (old_version, "")
            assert wait_until(lambda: running.has(2000), timeout=120), "the old stream stalled"
        finally:
            running.stop()
        assert running.text[:2000] == running_expected
        queued.thread.join(60)
        assert queued.finish_reason == "length" and queued.text == queued_expected
        assert running.headers is not None and queued.headers is not None
        assert running.headers["x-charlm-model-version"] == queued.headers["x-charlm-model-version"] == old_version


def test_a_half_copied_directory_is_never_served(own_models, tiny_models):
    source, half = tiny_models / "tiny-lstm", own_models / "half"
    weights = (source / WEIGHTS_FILE).read_bytes()
    with serve(own_models) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        server.wait_healthy()
        complete = threading.Event()
        served_early: list[bool] = []

        def watch() -> None:  # asks all along whether `half` is served before its copy completes
            while not complete.wait(0.02):  # paced, so as not to starve the server on a small machine
                listed = [card["id"] for card in client.get("/v1/models").json()["data"] if card["loaded"]]
                served_early.append("half" in listed and not complete.is_set())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        half.mkdir()
        for name in ("config.json", "vocab.json"):
            shutil.copy(source / name, half / name)
        with (half / WEIGHTS_FILE).open("wb") as out:
            out.write(weights[: len(weights) // 2])
            out.flush()
            assert wait_until(lambda: "truncated" in str(statuses(server.url).get("half", {}).get("error")),
                              LOAD_TIMEOUT_S), server.output()
            assert generated(server.url, "half", seed=1, chars=10).status_code == 503  # there, and failed
            out.write(weights[len(weights) // 2 :])
        complete.set()
        watcher.join(30)
        assert wait_until(lambda: status_of(server.url, "half") == "ready", LOAD_TIMEOUT_S), server.output()
        assert generated(server.url, "half", seed=1, chars=10).status_code == 200
        assert served_early and not any(served_early)


def test_a_model_removed_during_a_stream_finishes_it_and_takes_no_more(own_models, tiny_models):
    publish_model(tiny_models / "tiny-lstm", own_models / "doomed")
    with serve(own_models) as server:
        server.wait_healthy()
        expected = generated(server.url, "doomed", seed=4, chars=1500).json()["generated_text"]
        stream = Stream(server.url, "doomed", seed=4, chars=HUGE)
        try:
            assert wait_until(lambda: stream.has(10), timeout=60), server.output()
            shutil.rmtree(own_models / "doomed")
            assert wait_until(lambda: "doomed" not in statuses(server.url), LOAD_TIMEOUT_S), server.output()
            assert generated(server.url, "doomed", seed=4, chars=10).status_code == 404
            assert wait_until(lambda: stream.has(1500), timeout=120), "the stream stalled after the removal"
        finally:
            stream.stop()
        assert stream.text[:1500] == expected
