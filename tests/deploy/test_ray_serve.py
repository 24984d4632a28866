"""deploy/ray/ for real: `serve run` on the project's Serve config (a local Ray instance with this
machine's CPUs), two replicas on a tiny model, 32 concurrent streams (TGI and OpenAI) through Serve's
HTTP proxy, one endless stream cancelled midway, then a clean shutdown on Ctrl-C.

Needs the `ray` extra (`pip install -e '.[ray]'`); skipped without it, except under CI=true. About
a minute and a half on a 2-core machine (docs/deploy-ray.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from httpx_sse import aconnect_sse

from tests.deploy.helpers import REPO
from tests.deploy.kubernetes import require_tool
from tests.helpers import stop_group
from tests.service import load
from tests.service.helpers import free_port, wait_until

CONFIG = REPO / "deploy" / "ray" / "serve.yaml"
REPLICA = "x-charlm-replica"
STREAMS = 32  # half TGI, half OpenAI
CHARS = 120


@dataclass
class Served:
    replica: str
    text: str


def serve_binary() -> Path:
    """Ray's `serve` command beside this Python (the `ray` extra), failing under CI=true without it."""
    beside = Path(sys.executable).parent / "serve"
    found = beside if beside.is_file() else None
    return require_tool(found, "Ray Serve (the `ray` extra: pip install -e '.[ray]')")


def serve_config(models: Path, port: int, directory: Path) -> Path:
    """deploy/ray/serve.yaml with the tiny models, a free loopback port and two replicas exactly."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    app["args"].update(models_dir=str(models), default_model="tiny-gpt", models_poll_s=0, log_level="warning",
                       max_new_tokens=load.FOREVER)
    (deployment,) = app["deployments"]
    deployment["autoscaling_config"].update(min_replicas=2, max_replicas=2)
    deployment["ray_actor_options"]["num_cpus"] = 0.5  # two replicas on any machine with a core
    path = directory / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def serve_run(config: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`serve run CONFIG` from the repository root (it starts a local Ray and stops it on Ctrl-C)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        # Ctrl-C is what stops `serve run` cleanly; a shell that started these tests in the background
        # may have left SIGINT ignored, which the child would inherit (and never hear Ctrl-C).
        process = subprocess.Popen([str(serve_binary()), "run", str(config)], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield process
    finally:
        if process.poll() is None:
            stop_group(process, signal.SIGINT, 120)


def replicas_ready(url: str, seen: set[str]) -> bool:
    try:
        response = httpx.get(f"{url}/health/ready", timeout=5)
    except httpx.HTTPError:
        return False
    if response.status_code == 200:
        seen.add(response.headers[REPLICA])
    return len(seen) == 2


async def tgi_stream(http: httpx.AsyncClient, url: str, seed: int) -> Served:
    async with aconnect_sse(http, "POST", f"{url}/generate_stream", json=load.tgi_body(CHARS, seed)) as source:
        assert source.response.status_code == 200, await source.response.aread()
        events = [json.loads(event.data) async for event in source.aiter_sse()]
    assert [e["index"] for e in events] == list(range(1, CHARS + 1))
    assert events[-1]["details"]["finish_reason"] == "length"
    return Served(source.response.headers[REPLICA], events[-1]["generated_text"])


async def openai_stream(http: httpx.AsyncClient, url: str, seed: int) -> Served:
    body = {"prompt": "the ", "max_tokens": CHARS, "stream": True, "seed": seed}
    async with aconnect_sse(http, "POST", f"{url}/v1/completions", json=body) as source:
        assert source.response.status_code == 200, await source.response.aread()
        data = [event.data async for event in source.aiter_sse()]
    assert data[-1] == "[DONE]"
    choices = [json.loads(d)["choices"][0] for d in data[:-1]]
    assert choices[-1]["finish_reason"] == "length"
    text = "".join(choice["text"] for choice in choices)
    assert len(text) == CHARS
    return Served(source.response.headers[REPLICA], text)


async def cancelled_midway(http: httpx.AsyncClient, url: str) -> str:
    """An endless stream read for 20 characters, then dropped; returns its replica."""
    async with aconnect_sse(http, "POST", f"{url}/generate_stream", json=load.tgi_body(load.FOREVER)) as source:
        assert source.response.status_code == 200
        events = source.aiter_sse()
        for _ in range(20):
            await anext(events)
        return source.response.headers[REPLICA]


async def traffic(url: str) -> tuple[list[Served], str]:
    async with load.client(STREAMS + 1) as http:
        streams = [tgi_stream(http, url, seed) for seed in range(STREAMS // 2)]
        streams += [openai_stream(http, url, seed) for seed in range(STREAMS // 2)]
        *served, dropped_on = await asyncio.gather(*streams, cancelled_midway(http, url))
    return served, dropped_on


def engine_idle_after_cancel(url: str, replica: str) -> bool:
    """Whether `replica` (asked through the proxy until it answers) shows the cancelled sequence gone
    from its engine and counted."""
    health = httpx.get(f"{url}/health", timeout=5)
    metrics = httpx.get(f"{url}/metrics", timeout=5)
    if health.headers[REPLICA] != replica or metrics.headers[REPLICA] != replica:
        return False
    model = health.json()["models"]["tiny-gpt"]
    cancelled = 'charlm_requests_cancelled_total{model="tiny-gpt"} 1.0' in metrics.text
    return model["active"] == 0 and model["queued"] == 0 and cancelled


@pytest.mark.ray
def test_streams_through_ray_serve_on_two_replicas_with_cancellation_and_clean_shutdown(tiny_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-gpt", models / "tiny-gpt")
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    with serve_run(serve_config(models, port, tmp_path), log) as process:
        seen: set[str] = set()
        assert wait_until(lambda: replicas_ready(url, seen) or process.poll() is not None, timeout=300)
        assert process.poll() is None and len(seen) == 2, log.read_text()[-3000:]

        served, dropped_on = asyncio.run(traffic(url))
        assert len(served) == STREAMS  # every one complete and well-formed (checked as they came)
        assert {s.replica for s in served} == seen  # both replicas streamed
        same_seed = [s.text for s in served[: STREAMS // 2]], [s.text for s in served[STREAMS // 2:]]
        assert same_seed[0] == same_seed[1]  # TGI and OpenAI, same seed and model: the same text
        assert wait_until(lambda: engine_idle_after_cancel(url, dropped_on), timeout=60), log.read_text()[-3000:]

        process.send_signal(signal.SIGINT)
        assert process.wait(120) == 0, log.read_text()[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health/live", timeout=5)
