"""SIGTERM while streams run, watched the way an orchestrator watches: the readiness and liveness
probes polled from the moment the signal is sent until the process is gone.

Threads stream (TGI, one event per character) and note when and how each stream ended; the main
thread signals the server and polls `/health/ready` and `/health/live`. tests/service/test_drain.py
runs this small; `bench/reliability.py drain` runs it on the bundled models and prints the figures.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import threading
import time

import httpx

from tests.service import load
from tests.service.helpers import ServerProcess, wait_until

PROBE_EVERY_S = 0.005


@dataclasses.dataclass
class StreamEnd:
    reason: str  # the final event's finish_reason, or "cut: ..." when no final event came
    at: float  # time.monotonic() when the stream ended


@dataclasses.dataclass
class DrainReport:
    ends: list[StreamEnd]
    signalled_at: float
    unready_at: float | None  # first 503 from /health/ready
    live_statuses: list[int]  # every answer /health/live gave after the signal
    refused_status: int  # a generation request sent after readiness turned 503
    exit_code: int | None

    @property
    def readiness_latency_s(self) -> float | None:
        return None if self.unready_at is None else self.unready_at - self.signalled_at

    @property
    def first_end_after_s(self) -> float:
        return min(end.at for end in self.ends) - self.signalled_at


def stream_to_end(url: str, chars: int, ends: list[StreamEnd]) -> None:
    """One TGI stream; appends how it ended."""
    reason = "cut: no final event"
    try:
        with httpx.Client(timeout=300) as http, \
                http.stream("POST", f"{url}/generate_stream", json=load.tgi_body(chars)) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    details = json.loads(line.removeprefix("data:")).get("details")
                    if details is not None:
                        reason = details["finish_reason"]
    except httpx.HTTPError as exc:
        reason = f"cut: {exc!r}"
    ends.append(StreamEnd(reason, time.monotonic()))


def probe(http: httpx.Client, url: str) -> int | None:
    """The status code, or None when nothing answers (the process has stopped listening)."""
    try:
        return http.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def active(url: str) -> int:
    return sum(model.get("active", 0) for model in httpx.get(f"{url}/health").json()["models"].values())


def drain_during_streams(server: ServerProcess, streams: int, chars: int, exit_timeout: float = 300) -> DrainReport:
    """Start `streams` streams, wait until all run, send SIGTERM, then probe until the process exits."""
    ends: list[StreamEnd] = []
    threads = [threading.Thread(target=stream_to_end, args=(server.url, chars, ends)) for _ in range(streams)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: active(server.url) == streams, timeout=60), httpx.get(f"{server.url}/health").text
    unready_at, live_statuses, refused = None, [], 0
    with httpx.Client() as http:
        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while unready_at is None and server.process.poll() is None:
            if probe(http, f"{server.url}/health/ready") == 503:
                unready_at = time.monotonic()
            else:
                time.sleep(PROBE_EVERY_S)
        if unready_at is not None:
            refused = http.post(f"{server.url}/generate", json=load.tgi_body(5)).status_code
        while server.process.poll() is None:
            status = probe(http, f"{server.url}/health/live")
            if status is None:
                break
            live_statuses.append(status)
            time.sleep(0.05)
    for thread in threads:
        thread.join(exit_timeout)
    try:
        exit_code: int | None = server.process.wait(exit_timeout)
    except subprocess.TimeoutExpired:
        exit_code = None
    return DrainReport(ends, signalled_at, unready_at, live_statuses, refused, exit_code)
