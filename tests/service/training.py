"""Helpers of the training-service tests: a server with training on, uploads, and waiting on jobs."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.service.helpers import live_server

ADMIN_KEY = "admin-secret-7d1f"
API_KEY = "api-secret-93ab"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# A model that trains in a few seconds; `max_iters` is set per test.
TINY_JOB = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "eval_interval": 20,
            "eval_iters": 2, "warmup_iters": 5, "lr": 5e-3, "sample_chars": 20}
ENDED = ("succeeded", "failed", "cancelled")


@contextlib.contextmanager
def training_server(tiny_models: Path, tmp_path: Path, **overrides: Any) -> Iterator[tuple[str, Path, Path]]:
    """A live server on a copy of tiny-gpt with training on: (base url, models dir, data dir)."""
    models, data = tmp_path / "models", tmp_path / "data"
    shutil.copytree(tiny_models / "tiny-gpt", models / "tiny-gpt")
    settings = {"training": True, "admin_key": ADMIN_KEY, "api_key": API_KEY, "data_dir": data,
                "models_poll_s": 0, **overrides}
    with live_server(models, **settings) as (base, _):
        yield base, models, data


def upload(base: str, text: str | bytes, name: str = "text.txt") -> httpx.Response:
    content = text.encode() if isinstance(text, str) else text
    return httpx.post(f"{base}/v1/files", headers=ADMIN, files={"file": (name, content, "text/plain")},
                      data={"purpose": "fine-tune"}, timeout=30)


def create_job(base: str, file_id: str, model: str = "gpt-tiny", **fields: Any) -> httpx.Response:
    body = {"model": model, "training_file": file_id, **fields}
    return httpx.post(f"{base}/v1/fine_tuning/jobs", headers=ADMIN, json=body, timeout=60)


def job(base: str, job_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}", headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_for(base: str, job_id: str, statuses: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (current := job(base, job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} still {current['status']} after {timeout} s: {current}"
        time.sleep(0.1)
    return current


def events(base: str, job_id: str) -> list[dict[str, Any]]:
    """All of a job's events, oldest first (read newest first, a page at a time)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        answer = httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}/events", params=params, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        found += answer.json()["data"]
        if not answer.json()["has_more"]:
            return found[::-1]
        params["after"] = found[-1]["id"]


def wait_for_event(base: str, job_id: str, says: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not (found := [e for e in events(base, job_id) if says in e["message"]]):
        assert time.monotonic() < deadline, f"no event saying {says!r} after {timeout} s"
        time.sleep(0.1)
    return found[0]
