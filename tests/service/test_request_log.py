"""The one line each request logs: its timings count from the request's start on every path,
the error path included."""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import LONG, engine_handle_of, live_server


def logged_line(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    [line] = [r.getMessage() for r in caplog.records if r.name == "service.requests" and request_id in r.getMessage()]
    return line


def test_a_request_whose_engine_dies_mid_stream_logs_its_time_from_its_own_start(tiny_models: Path, caplog):
    """The front end itself ends the sequences of an engine process that died; their total time once
    counted from the clock's zero, so the line said total_ms=2655995.5 (the machine's uptime)."""
    caplog.set_level(logging.INFO, logger="service.requests")
    body = {"inputs": "the", "parameters": {"max_new_tokens": LONG}}
    with live_server(tiny_models, engine_process=True, max_new_tokens=LONG) as (url, app):
        started = time.monotonic()
        with httpx.stream("POST", f"{url}/generate_stream", json=body, headers={"x-request-id": "dies-1"},
                          timeout=120) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # the engine is generating
            os.kill(engine_handle_of(app, "tiny-gpt").pid, signal.SIGKILL)
            rest = list(lines)
        elapsed_ms = (time.monotonic() - started) * 1000
    assert any('"error_type": "generation"' in line for line in rest), rest[-3:]
    line = logged_line(caplog, "dies-1")
    found = re.search(r"finish=error first_char_ms=\S+ total_ms=([\d.]+)$", line)
    assert found is not None, line
    assert 0 <= float(found.group(1)) <= elapsed_ms, (line, elapsed_ms)
