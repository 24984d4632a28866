"""The service over real HTTP: uvicorn in a thread for disconnects, `charlm serve` as a process."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from httpx_sse import connect_sse

from tests.service import load
from tests.service.helpers import LONG, engine_of, live_server, serve_process, wait_until


def long_stream(base: str, client: httpx.Client):
    body = {"inputs": "the", "parameters": {"max_new_tokens": LONG}}
    return client.stream("POST", f"{base}/generate_stream", json=body)


def test_disconnected_streams_leave_the_batch_running_or_queued(tiny_models):
    server = live_server(tiny_models, max_batch_size=1, max_new_tokens=LONG)
    with server as (base, app), httpx.Client(timeout=30) as client:
        engine = engine_of(app, "tiny-gpt")
        with long_stream(base, client) as running:
            lines = running.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            with long_stream(base, client) as queued:
                assert queued.status_code == 200
                assert wait_until(lambda: engine.queued == 1), "the second stream was never queued"
            assert wait_until(lambda: engine.queued == 0), "queued request not dropped"
        assert wait_until(lambda: engine.active == 0), "running request not dropped"
        assert load.cancelled(base) == 2


def test_a_disconnected_non_streaming_request_is_cancelled(tiny_models):
    with live_server(tiny_models, max_new_tokens=LONG) as (base, app):
        engine = engine_of(app, "tiny-gpt")
        body = {"inputs": "the", "parameters": {"max_new_tokens": LONG}}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/generate", json=body, timeout=0.5)
        assert wait_until(lambda: engine.active == 0), "the request was not dropped"
        assert load.cancelled(base) == 1


def test_charlm_serve_streams_and_drains_on_sigterm(tiny_models):
    args = ("--models-dir", str(tiny_models), "--default-model", "tiny-lstm", "--shutdown-grace-s", "30")
    with serve_process(*args) as server:
        base, process = server.url, server.process
        server.wait_healthy()
        with httpx.Client(timeout=30) as client:
            body = {"inputs": "the king", "parameters": {"max_new_tokens": 20, "seed": 1, "do_sample": True}}
            with connect_sse(client, "POST", f"{base}/generate_stream", json=body) as source:
                events = [json.loads(e.data) for e in source.iter_sse()]
            assert len(events) == 20 and events[-1]["details"]["finish_reason"] == "length"
            body = {"inputs": "the", "parameters": {"max_new_tokens": 3000}}
            with connect_sse(client, "POST", f"{base}/generate_stream", json=body) as source:
                stream = source.iter_sse()
                next(stream)
                process.send_signal(signal.SIGTERM)
                assert wait_until(lambda: httpx.get(f"{base}/health").status_code == 503, timeout=10), \
                    "/health never turned 503"
                refused = httpx.post(f"{base}/generate", json={"inputs": "a"})
                assert refused.status_code == 503
                last = json.loads(list(stream)[-1].data)
            assert last["details"]["finish_reason"] == "length"  # the stream in flight finished
        assert process.wait(60) == 0


def test_charlm_serve_without_a_loadable_model_exits_non_zero(tmp_path):
    (tmp_path / "junk").mkdir()
    with serve_process("--models-dir", str(tmp_path)) as server:
        assert server.process.wait(120) == 2
        output = server.output()
        assert "no model could be loaded" in output and "junk" in output


def test_a_second_signal_exits_at_once(tiny_models):
    """The first SIGTERM drains (here with a grace far longer than the test), the second ends the
    process without waiting for the stream it was draining."""
    args = ("--models-dir", str(tiny_models), "--default-model", "tiny-gpt", "--shutdown-grace-s", "600",
            "--max-new-tokens", str(LONG))
    with serve_process(*args) as server, httpx.Client(timeout=60) as client:
        server.wait_healthy()
        with long_stream(server.url, client) as stream:
            assert next(line for line in stream.iter_lines() if line.startswith("data:"))
            server.process.send_signal(signal.SIGTERM)
            assert wait_until(lambda: httpx.get(f"{server.url}/health").status_code == 503, timeout=10), \
                "the first signal did not start draining"
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(30)  # raises TimeoutExpired if it waited on the stream instead
