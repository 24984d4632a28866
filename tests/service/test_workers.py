"""`charlm serve --workers 2`: two HTTP front ends share the port and every model's engine process.
Everything that holds with one front end holds with two: 429 from every front end's requests,
cancellation on disconnect, metrics of the whole server, the same models and versions everywhere,
a dead engine or front end, seeded output, and a drain that loses nothing.

Each request opens a connection of its own, so the kernel spreads them over both front ends; the
tests check from /info which front end answered that both were reached. These start real server
processes and wait for conditions with generous limits (a busy machine starts them slowly)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import train_tiny, wait_until
from tests.service import load
from tests.service.helpers import ServerProcess, publish_model, serve_process

ADMIN = "admin-secret"
WAIT_S = 120


@pytest.fixture(scope="module")
def two_models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("workers") / "models"
    directory.mkdir()
    for name in ("tiny-gpt", "tiny-lstm"):
        shutil.copytree(tiny_models / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def server(two_models: Path) -> Iterator[ServerProcess]:
    """Two front ends, batches of 4, administration on, no polling (reloads are explicit)."""
    with serve_process("--models-dir", str(two_models), "--default-model", "tiny-gpt", "--workers", "2",
                       "--max-batch-size", "4", "--admin-key", ADMIN, "--models-poll-s", "0") as running:
        running.wait_healthy()
        # /health answers once one front end does; the other may still be starting (a loaded
        # machine showed it: 24 connections all went to front end 1), so wait for both.
        assert wait_until(lambda: set(front_ends_seen(running.url, tries=8)) == {0, 1}, timeout=WAIT_S), \
            running.output()
        yield running


def fresh(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request on a connection of its own (so that any front end may take it)."""
    with httpx.Client(timeout=60) as http:
        return http.request(method, f"{url}{path}", **kwargs)


def front_ends_seen(url: str, tries: int = 24) -> dict[int, int]:
    """Front end index -> pid, from /info over fresh connections."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        front = fresh(url, "GET", "/info").json()["front_end"]
        seen[front["index"]] = front["pid"]
    return seen


def every_front_end(url: str, check: Any, tries: int = 24) -> bool:
    """`check(response)` holds for /health as answered over `tries` fresh connections, and both
    front ends answered."""
    indices = set()
    for _ in range(tries):
        health = fresh(url, "GET", "/health")
        info = fresh(url, "GET", "/info").json()["front_end"]
        indices.add(info["index"])
        if not check(health):
            return False
    return indices == {0, 1}


def metric(url: str, name: str, labels: str) -> float:
    for line in fresh(url, "GET", "/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_both_front_ends_answer_on_one_port(server):
    seen = front_ends_seen(server.url)
    assert set(seen) == {0, 1} and len(set(seen.values())) == 2
    assert fresh(server.url, "GET", "/info").json()["front_end"]["workers"] == 2


def test_ps_and_top_name_the_supervisor_every_front_end_and_every_models_engine(server):
    """The full title on the command line (ps, top -c), a short one as the command name (top)."""
    models = fresh(server.url, "GET", "/admin/models", headers={"Authorization": f"Bearer {ADMIN}"}).json()["models"]
    expected = {server.process.pid: ("charlm: supervisor", "charlm-super")}
    expected |= {pid: (f"charlm: front end {index}", f"charlm-front-{index}")
                 for index, pid in front_ends_seen(server.url).items()}
    expected |= {m["engine_pid"]: (f"charlm: engine {m['name']}", "charlm-engine") for m in models}
    assert len(expected) == 1 + 2 + len(models) >= 5
    named = {pid: (proc_file(pid, "cmdline").split("\0")[0], proc_file(pid, "comm").strip()) for pid in expected}
    assert named == expected


def proc_file(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().decode()


def test_seeded_text_is_the_same_alone_or_among_others_on_both_front_ends(server):
    body = load.tgi_body(40, seed=77)
    alone = fresh(server.url, "POST", "/generate", json=body).json()["generated_text"]

    async def crowd() -> list[str]:
        async with load.client(12) as http:
            bodies = [load.tgi_body(60, seed=s) for s in range(11)] + [body]
            responses = await asyncio.gather(*(http.post(f"{server.url}/generate", json=b) for b in bodies))
            return [r.json()["generated_text"] for r in responses]

    assert asyncio.run(crowd())[-1] == alone


def test_metrics_add_up_over_both_front_ends(server):
    before = metric(server.url, "charlm_requests_total", 'route="/generate",status="200"')
    chars_before = metric(server.url, "charlm_chars_generated_total", 'model="tiny-gpt"')
    for seed in range(10):
        assert fresh(server.url, "POST", "/generate", json=load.tgi_body(7, seed=seed)).status_code == 200
    assert metric(server.url, "charlm_requests_total", 'route="/generate",status="200"') == before + 10
    assert wait_until(lambda: metric(server.url, "charlm_chars_generated_total",
                                     'model="tiny-gpt"') == chars_before + 70, timeout=30)


def test_a_model_added_is_served_by_every_front_end_after_a_reload_from_either(server, two_models, corpus_file,
                                                                                tmp_path):
    trained = train_tiny("gpt", corpus_file, tmp_path / "fresh", seed=5)
    publish_model(trained, two_models / "fresh")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    report = fresh(server.url, "POST", "/admin/reload", headers=auth).json()
    assert report["loaded"] == ["fresh"]
    version = fresh(server.url, "GET", "/health").json()["models"]["fresh"]["version"]
    assert every_front_end(server.url, lambda r: r.json()["models"].get("fresh", {}).get("version") == version)
    body = {"inputs": "the", "model": "fresh", "parameters": {"max_new_tokens": 5}}
    assert all(fresh(server.url, "POST", "/generate", json=body).status_code == 200 for _ in range(6))


def test_a_dead_engine_is_restarted_and_every_front_end_follows_the_new_one(server):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    models = fresh(server.url, "GET", "/admin/models", headers=auth).json()["models"]
    pid = next(m["engine_pid"] for m in models if m["name"] == "tiny-lstm")
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        now = fresh(server.url, "GET", "/admin/models", headers=auth).json()["models"]
        return any(m["name"] == "tiny-lstm" and m["status"] == "ready" and m["engine_pid"] != pid for m in now)

    assert wait_until(restarted, timeout=WAIT_S), server.output()[-3000:]
    assert every_front_end(server.url, lambda r: r.json()["models"]["tiny-lstm"]["status"] == "ready")
    body = {"inputs": "the", "model": "tiny-lstm", "parameters": {"max_new_tokens": 5}}
    assert all(fresh(server.url, "POST", "/generate", json=body).status_code == 200 for _ in range(6))


def test_a_dead_front_end_is_replaced_and_the_server_serves_on(server):
    seen = front_ends_seen(server.url)
    os.kill(seen[0], signal.SIGKILL)
    assert wait_until(lambda: (now := front_ends_seen(server.url, tries=12)).get(0) not in (None, seen[0])
                      and set(now) == {0, 1}, timeout=WAIT_S), server.output()[-3000:]
    assert fresh(server.url, "POST", "/generate", json=load.tgi_body(5, seed=1)).status_code == 200
    assert "front end 0" in server.output() and "starting another" in server.output()


@pytest.fixture()
def small_server(two_models: Path) -> Iterator[ServerProcess]:
    """Room for one running and one queued sequence per model, in all."""
    with serve_process("--models-dir", str(two_models), "--default-model", "tiny-gpt", "--workers", "2",
                       "--max-batch-size", "1", "--max-queued", "1", "--models-poll-s", "0",
                       "--max-new-tokens", str(load.FOREVER)) as running:
        running.wait_healthy()
        yield running


def test_the_queue_limit_counts_both_front_ends_and_disconnects_free_the_rows(small_server):
    url = small_server.url

    async def crowd() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            streams = [http.stream("POST", f"{url}/generate_stream", json=load.tgi_body(load.FOREVER))
                       for _ in range(8)]
            responses = [await s.__aenter__() for s in streams]
            statuses = [r.status_code for r in responses]
            assert wait_until(lambda: load.engine_counts(url) == (1, 1), timeout=30)
            for s in streams:
                await s.__aexit__(None, None, None)  # every client leaves
            return statuses

    statuses = asyncio.run(crowd())
    assert sorted(statuses) == [200, 200] + [429] * 6
    assert wait_until(lambda: load.engine_counts(url) == (0, 0), timeout=30), "the rows were not freed"
    assert wait_until(lambda: load.cancelled(url) == 2, timeout=30)


def test_sigterm_drains_both_front_ends_and_every_stream_completes(two_models):
    with serve_process("--models-dir", str(two_models), "--default-model", "tiny-gpt", "--workers", "2",
                       "--max-batch-size", "16", "--models-poll-s", "0") as server:
        server.wait_healthy()

        async def streams() -> list[str]:
            async with load.client(12) as http:
                tasks = [asyncio.create_task(load.checked_stream(http, server.url, load.tgi_body(300, seed=s)))
                         for s in range(12)]
                deadline = time.monotonic() + 60  # every stream admitted (a request after SIGTERM gets 503)
                while sum(load.engine_counts(server.url)) < 12 and not any(t.done() for t in tasks):
                    assert time.monotonic() < deadline, "the streams never all ran"
                    await asyncio.sleep(0.01)
                server.process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        texts = asyncio.run(streams())
        assert all(len(text) == 300 for text in texts)
        assert server.process.wait(60) == 0
        assert "draining" in server.output()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_clear_error_before_any_model_loads(two_models, workers):
    """A busy port is a one-line error, exit 2, at once: not after the models load, not a traceback
    (several front ends bind it in the supervisor; one front end in uvicorn)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "charlm", "serve", "--workers", str(workers), "--port", str(port),
                   "--models-dir", str(two_models)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    assert "loaded" not in result.stderr  # no model was loaded first
