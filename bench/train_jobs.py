"""The training API as bench/train_service.py drives it, and training speed read from run events.

    upload (/v1/files) → create (/v1/fine_tuning/jobs) → wait for a status, or for training under way
    → metrics events (data.chars_per_s, data.step) → iterations per second, as for a `charlm train
    --events FILE` run read from its file

Speed has one definition for both: the trainer's own progress windows (10 iterations each, timed
with perf_counter, evaluations and startup outside them), `chars_per_s / chars_per_step`.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from spawned import BENCH_ADMIN_KEY  # bench/, beside this script

POLL_S = 0.5
TERMINAL = ("succeeded", "failed", "cancelled")


class TrainingClient:
    """/v1/files and /v1/fine_tuning/jobs of a server started with the bench's admin key."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {BENCH_ADMIN_KEY}"}, timeout=120)

    def upload(self, path: Path) -> str:
        files = {"file": (path.name, path.read_bytes(), "text/plain")}
        answer = self.http.post("/v1/files", files=files, data={"purpose": "fine-tune"})
        answer.raise_for_status()
        return str(answer.json()["id"])

    def create(self, file_id: str, preset: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        body = {"model": preset, "training_file": file_id, "hyperparameters": hyperparameters}
        answer = self.http.post("/v1/fine_tuning/jobs", json=body)
        if answer.status_code != 200:
            raise SystemExit(f"the job was refused: {answer.text}")
        return dict(answer.json())

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/fine_tuning/jobs/{job_id}")
        answer.raise_for_status()
        return dict(answer.json())

    def cancel(self, job_id: str) -> None:
        self.http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").raise_for_status()

    def wait(self, job_id: str, statuses: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
        """The job once its status is one of `statuses`; a job that ends otherwise ends the bench."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if job["status"] in TERMINAL or time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} is {job['status']} (waited for {', '.join(statuses)}): {job['error']}")
            time.sleep(POLL_S)

    def wait_training(self, job_id: str, windows: int, timeout_s: float) -> list[dict[str, Any]]:
        """Once the run has timed `windows` progress windows: past its startup and first evaluation."""
        deadline = time.monotonic() + timeout_s
        while len(rates := self.metrics(job_id)) < windows:
            if time.monotonic() > deadline or self.job(job_id)["status"] in TERMINAL:
                raise SystemExit(f"job {job_id} did not get going: {self.job(job_id)}")
            time.sleep(POLL_S)
        return rates

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """The data of every metrics event with a training speed, oldest first (the API pages newest first)."""
        found, after = [], None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            answer = self.http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params)
            answer.raise_for_status()
            page = answer.json()
            found += [e["data"] for e in page["data"] if e["type"] == "metrics" and "chars_per_s" in e["data"]]
            if not page["has_more"]:
                return found[::-1]
            after = page["last_id"]


def file_metrics(events: Path) -> list[dict[str, Any]]:
    """The progress events of a `charlm train --events` file, as the service's metrics data has them."""
    lines = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    return [e for e in lines if e["type"] == "progress"]


def iterations_per_s(metrics: list[dict[str, Any]], chars_per_step: int) -> float:
    """The median progress window's speed."""
    return statistics.median(m["chars_per_s"] for m in metrics) / chars_per_step
