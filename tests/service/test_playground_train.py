"""The playground's Train view, in headless Chromium against the real server with training on: a
text chosen in the page is uploaded, a tiny real job trains on it, the page draws its losses and
shows its samples as they come, and Try it opens the new model in the Text view, which generates
from it. Cancel stops a running job; a wrong key and a refused setting are told next to their
controls; a file over the server's upload limit is refused in the page, before any request."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import make_corpus
from tests.service.browser import open_page, wait_for_outputs, wait_for_script
from tests.service.helpers import live_server

ADMIN_KEY = "trainer-key"
STEPS = 30
SETTINGS = {  # a job of seconds on one core: a one-layer 32-wide GPT, evaluated every 10 steps
    "n_layer": 1, "n_embd": 32, "block_size": 16, "batch_size": 4, "eval_interval": 10, "eval_iters": 2,
    "warmup_iters": 2, "sample_chars": 20,
}
UPLOAD_LIMIT = 64 * 1024  # bytes: the server's, small, so that a file over it is cheap to make
JOB_TIMEOUT_S = 300  # a tiny job takes seconds; a loaded machine, and a child process's start, take longer


@pytest.fixture(scope="module")
def train_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The server with training on, on a models directory of its own (tiny-gpt), where jobs publish."""
    models = tmp_path_factory.mktemp("train-models")
    shutil.copytree(tiny_models / "tiny-gpt", models / "tiny-gpt")
    data = tmp_path_factory.mktemp("train-data")
    with live_server(models, training=True, admin_key=ADMIN_KEY, data_dir=data, max_upload_bytes=UPLOAD_LIMIT,
                     models_poll_s=0.5) as running:
        yield running


@pytest.fixture()
def train_page(browser: Any, train_server: tuple[str, Any]) -> Iterator[Any]:
    """A fresh playground page on `train_server`, in the Train view with the admin key typed."""
    with open_page(browser, train_server[0]) as page:
        page.check("#view-train")
        page.fill("#admin-key", ADMIN_KEY)
        yield page


def choose_text(page: Any, text: bytes, name: str = "verse.txt") -> None:
    page.set_input_files("#train-file", files=[{"name": name, "mimeType": "text/plain", "buffer": text}])


def chart_points(page: Any) -> tuple[int, int]:
    """The training and validation points the loss chart holds."""
    chart = page.locator("#loss-chart")
    return int(chart.get_attribute("data-train-points")), int(chart.get_attribute("data-valid-points"))


def test_a_text_trains_a_model_the_page_charts_and_then_generates_from(train_page, train_server):
    base = train_server[0]
    page = train_page
    jobs: list[dict[str, Any]] = []
    page.on("request", lambda r: jobs.append(r.post_data_json) if r.url.endswith("/v1/fine_tuning/jobs") else None)
    text = make_corpus(n_lines=120).encode()  # a few kB
    choose_text(page, text)
    assert page.text_content("#train-file-info") == f"verse.txt, {len(text) / 1000:.1f} kB"
    page.select_option("#train-preset", "gpt-tiny")
    page.fill("#train-budget", str(STEPS))
    page.select_option("#train-budget-unit", "max_iters")
    page.fill("#train-suffix", "verse")
    page.click("#train-advanced summary")
    page.fill("#train-settings", "\n".join(f"{key}={value}" for key, value in SETTINGS.items()))
    page.click("#train-start")
    wait_for_script(page, "() => ['succeeded', 'failed', 'cancelled'].includes(document.getElementById('training')"
                          ".dataset.status)", timeout=JOB_TIMEOUT_S)
    assert page.get_attribute("#training", "data-status") == "succeeded", page.text_content("#train-status")
    [body] = jobs
    assert body["model"] == "gpt-tiny" and body["suffix"] == "verse" and body["training_file"].startswith("file-")
    assert body["hyperparameters"] == {**SETTINGS, "max_iters": STEPS}

    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    job = httpx.get(f"{base}/v1/fine_tuning/jobs/{page.get_attribute('#training', 'data-job')}",
                    headers=headers, timeout=30).json()
    name = job["fine_tuned_model"]
    assert page.text_content("#train-status") == f"succeeded: {name} is served"
    trained, validated = chart_points(page)
    assert trained >= 1 and validated >= STEPS // SETTINGS["eval_interval"]  # an evaluation each 10 steps
    assert page.locator("#loss-chart canvas").count() == 1
    assert page.text_content("#train-step") == f"{STEPS} of {STEPS}"
    samples = page.locator("#train-samples .sample-text").all_text_contents()
    assert samples and all(samples)
    page.check("#train-log")  # the chart built again on a log scale keeps its points
    assert chart_points(page) == (trained, validated)

    page.click("#train-try")
    wait_for_script(page, "(name) => document.body.dataset.view === 'text'"
                          " && document.getElementById('model').value === name", name)
    page.fill("#max-new-tokens", "20")
    page.click("#generate")
    [panel] = wait_for_outputs(page, 1, "finished")
    assert panel.get_attribute("data-model") == name
    assert len(panel.locator(".generated").text_content()) == 20


def test_cancel_stops_a_running_job(train_page):
    page = train_page
    choose_text(page, make_corpus(n_lines=120).encode())
    page.fill("#train-budget", "1000000")  # steps: it runs until cancelled
    page.select_option("#train-budget-unit", "max_iters")
    page.click("#train-advanced summary")
    page.fill("#train-settings", "\n".join(f"{key}={value}" for key, value in SETTINGS.items()))
    page.click("#train-start")
    wait_for_script(page, "() => Number(document.getElementById('loss-chart').dataset.trainPoints) > 0",
                    timeout=JOB_TIMEOUT_S)
    assert page.get_attribute("#training", "data-status") == "running" and page.is_enabled("#train-cancel")
    wait_for_script(page, "() => document.getElementById('train-eta').textContent !== ''")  # its estimated finish
    page.click("#train-cancel")
    wait_for_script(page, "() => document.getElementById('training').dataset.status === 'cancelled'",
                    timeout=JOB_TIMEOUT_S)
    assert page.text_content("#train-status") == "cancelled" and page.text_content("#train-eta") == ""
    assert page.is_hidden("#train-try") and page.is_disabled("#train-cancel") and page.is_enabled("#train-start")


def test_a_wrong_key_and_a_refused_setting_are_told_next_to_their_controls(train_page):
    page = train_page
    choose_text(page, make_corpus(n_lines=120).encode())
    page.fill("#admin-key", "not-the-key")
    page.click("#train-start")
    wait_for_script(page, "() => !document.getElementById('admin-key-error').hidden")
    assert page.get_attribute("#training", "data-status") == "refused"
    page.fill("#admin-key", ADMIN_KEY)
    page.click("#train-advanced summary")
    page.fill("#train-settings", "n_layer=0")
    page.click("#train-start")
    wait_for_script(page, "() => !document.getElementById('train-settings-error').hidden")
    assert "n_layer" in page.text_content("#train-settings-error")
    assert page.is_hidden("#admin-key-error") and page.get_attribute("#training", "data-status") == "refused"


def test_a_file_over_the_upload_limit_is_refused_in_the_page_before_any_request(train_page, train_server):
    limits = httpx.get(f"{train_server[0]}/info", timeout=30).json()["limits"]
    assert limits.get("max_upload_bytes") == UPLOAD_LIMIT, "GET /info must report the limit the page checks against"
    page = train_page
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    size = UPLOAD_LIMIT + 1
    dropped = page.evaluate_handle(
        "(size) => { const files = new DataTransfer();"
        " files.items.add(new File(['x'.repeat(size)], 'too-long.txt', {type: 'text/plain'})); return files; }",
        size,
    )
    page.dispatch_event("#train-drop", "drop", {"dataTransfer": dropped})
    assert page.text_content("#train-file-info") == f"too-long.txt, {size / 1000:.1f} kB"  # the dropped file is chosen
    error = page.locator("#train-file-error")
    assert error.is_visible()  # at once
    expected = f"too-long.txt is {size:,} bytes, over the server's limit of {UPLOAD_LIMIT:,} bytes"  # 65.5 kB both
    assert error.text_content().startswith(expected)
    page.click("#train-start")
    assert error.is_visible() and page.get_attribute("#train-file", "aria-invalid") == "true"
    assert page.get_attribute("#training", "data-status") is None  # an upload begins by saying "uploading"
    assert sent == []
