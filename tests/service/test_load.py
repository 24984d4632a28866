"""The real server process under load: a soak, a disconnect storm, an overload burst (SIGTERM during
live streams is in test_drain.py). Budgets are small here; `bench/reliability.py` runs the same
scenarios longer."""

from __future__ import annotations

import asyncio
import contextlib
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
    engines = [name for name in growth if "charlm: engine" in name]
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
