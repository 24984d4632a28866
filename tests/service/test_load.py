"""The real server process under load: a soak, a disconnect storm, an overload burst, and SIGTERM
during live streams. Budgets are small here; `bench/reliability.py` runs the same scenarios longer."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service import load
from tests.service.helpers import ServerProcess, serve_process, wait_until


@contextlib.contextmanager
def tiny_server(models: Path, *flags: str) -> Iterator[ServerProcess]:
    args = ("--models-dir", str(models), "--default-model", "tiny-gpt", "--log-level", "warning", *flags)
    with serve_process(*args) as server:
        server.wait_healthy()
        yield server


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for resident memory")
def test_soak_64_streams_without_errors_or_memory_growth(tiny_models):
    """The server and every process under it (the engines run in processes of their own), each
    judged on its own and all together."""
    with tiny_server(tiny_models, "--max-batch-size", "64") as server:
        asyncio.run(load.soak(server.url, clients=64, seconds=3, chars=60))  # the allocators find their working sets
        with load.sampled_memory(server.process.pid) as memory:
            report = asyncio.run(load.soak(server.url, clients=64, seconds=12, chars=60))
        assert report.errors == [] and report.streams >= 64
        assert wait_until(lambda: load.idle(server.url), timeout=10), load.engine_counts(server.url)
    growth = memory.growth()
    engines = [name for name in growth if "spawned" in name]
    assert len(engines) >= 3, f"the three engine processes were not measured: {sorted(growth)}"
    grown = {name: (first, last) for name, (first, last) in growth.items() if last >= first * 1.05}
    assert not grown, f"resident memory grew by 5% or more: {memory.summary()}"


def test_a_disconnect_storm_leaks_nothing_and_leaves_survivors_unchanged(tiny_models):
    flags = ("--max-batch-size", "16", "--max-queued", "1024", "--max-new-tokens", str(load.FOREVER))
    with tiny_server(tiny_models, *flags) as server:
        before = load.cancelled(server.url)
        report = asyncio.run(load.disconnect_storm(server.url, droppers=200, seeds=list(range(8)), chars=40))
        assert wait_until(lambda: load.idle(server.url), timeout=30), httpx.get(f"{server.url}/health").json()
        assert load.cancelled(server.url) - before == 200
    assert report.stormy == report.baseline
    assert set(report.ways_out) == {"early", "mid-stream"}


def test_an_overload_burst_is_served_or_refused_with_retry_after(tiny_models):
    with tiny_server(tiny_models, "--max-batch-size", "4", "--max-queued", "8") as server:
        report = asyncio.run(asyncio.wait_for(load.overload(server.url, requests=60, chars=200), timeout=120))
        assert report.problems == []
        assert report.completed >= 12 and report.refused >= 1  # capacity: 4 running + 8 queued
        assert report.completed + report.refused == 60
        assert wait_until(lambda: load.idle(server.url), timeout=10), load.engine_counts(server.url)


def stream_until_end(url: str, chars: int, results: list[str]) -> None:
    body = load.tgi_body(chars)
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/generate_stream", json=body) as response:
        last = [line for line in response.iter_lines() if line.startswith("data:")][-1]
    results.append(httpx.Response(200, content=last.removeprefix("data:")).json()["details"]["finish_reason"])


@pytest.mark.parametrize(("grace", "chars", "reason"), [("60", 400, "length"), ("1", load.FOREVER, "cancelled")])
def test_sigterm_during_16_streams(tiny_models, grace, chars, reason):
    flags = ("--shutdown-grace-s", grace, "--max-new-tokens", str(load.FOREVER))
    with tiny_server(tiny_models, *flags) as server:
        results: list[str] = []
        clients = [threading.Thread(target=stream_until_end, args=(server.url, chars, results)) for _ in range(16)]
        for thread in clients:
            thread.start()
        assert wait_until(lambda: load.engine_counts(server.url)[0] == 16), load.engine_counts(server.url)
        server.process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: httpx.get(f"{server.url}/health").status_code == 503, timeout=10), "no 503"
        assert httpx.post(f"{server.url}/generate", json=load.tgi_body(5)).status_code == 503
        for thread in clients:
            thread.join(120)
        assert server.process.wait(60) == 0, server.output()
    assert results == [reason] * 16
