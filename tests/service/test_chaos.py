"""Chaos: processes of a real `charlm serve --workers 2` killed, stopped or crashing while it serves.

Loopback only, every wait bounded. An engine killed during 32 streams: clear errors, then the model
is served again with no operator, and its seeded text is what it was. A hung engine (SIGSTOP) is
killed and restarted within CHARLM_ENGINE_HANG_S and a start. A crash loop ends `failed` with its
reason, and the default model down is a 503, never another model's text. A killed front end is
replaced while the other's streams finish; a killed supervisor leaves no process behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.helpers import wait_until
from tests.service import load
from tests.service.helpers import ServerProcess, serve_process

ADMIN = {"Authorization": "Bearer admin-secret"}
HANG_S = 2.0
BACK_WITHIN_S = 10.0  # the bound for a small model on a CPU: served again after its engine died
SEEDED = {"inputs": "the ", "model": "tiny-gpt", "parameters": {"max_new_tokens": 40, "seed": 11}}


@pytest.fixture(scope="module")
def two_models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("chaos") / "models"
    for name in ("tiny-gpt", "tiny-lstm"):
        shutil.copytree(tiny_models / name, directory / name)
    return directory


@pytest.fixture()
def server(two_models: Path) -> Iterator[ServerProcess]:
    with serve_process("--models-dir", str(two_models), "--default-model", "tiny-gpt", "--workers", "2",
                       "--max-batch-size", "32", "--admin-key", "admin-secret", "--models-poll-s", "0",
                       "--engine-hang-s", str(HANG_S), "--engine-restarts", "1",
                       "--max-new-tokens", str(load.FOREVER)) as running:
        running.wait_healthy()
        yield running


def engine_pid(url: str, model: str) -> int | None:
    answer = httpx.get(f"{url}/admin/models", headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    for described in answer.json()["models"]:
        if described["name"] == model and described["status"] == "ready":
            return int(described["engine_pid"])
    return None


def serves_again(url: str, old_pid: int) -> bool:
    pid = engine_pid(url, "tiny-gpt")
    return pid is not None and pid != old_pid


async def stream_outcome(http: httpx.AsyncClient, url: str, seed: int) -> str:
    """How one long stream ended: "error: …" from an error event, or "finished"."""
    body = {"inputs": "the ", "model": "tiny-gpt", "parameters": {"max_new_tokens": 100_000, "seed": seed}}
    async with aconnect_sse(http, "POST", f"{url}/generate_stream", json=body) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for event in source.aiter_sse():
            data = json.loads(event.data)
            if "error" in data:
                return f"error: {data['error']}"
            if data.get("details") is not None:
                return "finished"
    return "cut"


async def kill_during_streams(url: str, victim: int, streams: int = 32) -> list[str]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=streams + 4)) as http:
        running = [asyncio.create_task(stream_outcome(http, url, seed)) for seed in range(streams)]
        deadline = time.monotonic() + 60
        while load.engine_counts(url)[0] < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        return list(await asyncio.wait_for(asyncio.gather(*running), 60))


def test_an_engine_killed_during_32_streams_gives_clear_errors_and_is_served_again_unasked(server):
    before = httpx.post(f"{server.url}/generate", json=SEEDED, timeout=30).json()
    victim = engine_pid(server.url, "tiny-gpt")
    assert victim is not None
    outcomes = asyncio.run(kill_during_streams(server.url, victim))
    killed = time.monotonic()
    assert all(o.startswith("error: ") and "exited unexpectedly" in o for o in outcomes), outcomes
    assert wait_until(lambda: serves_again(server.url, victim), timeout=BACK_WITHIN_S, interval=0.1), \
        server.output()[-3000:]
    assert time.monotonic() - killed < BACK_WITHIN_S
    assert httpx.post(f"{server.url}/generate", json=SEEDED, timeout=30).json() == before
    assert "starting another engine in 0 s" in server.output()


def test_a_stopped_engine_is_found_hung_killed_and_restarted(server):
    victim = engine_pid(server.url, "tiny-gpt")
    assert victim is not None
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    # A request made meanwhile ends within its bounds: an error when the hung engine is killed, or
    # text from the new engine once it serves; never a hang.
    answer = httpx.post(f"{server.url}/generate", json=SEEDED, timeout=HANG_S + 60)
    assert answer.status_code in (200, 503) or "hung" in answer.text, answer.text
    assert wait_until(lambda: serves_again(server.url, victim), timeout=HANG_S + BACK_WITHIN_S, interval=0.1), \
        server.output()[-3000:]
    assert time.monotonic() - stopped < HANG_S + BACK_WITHIN_S
    assert f"hung and was killed: it sent no sign of life for {HANG_S:g} s" in server.output()
    assert httpx.post(f"{server.url}/generate", json=SEEDED, timeout=30).status_code == 200


def test_a_crash_loop_ends_failed_and_the_default_down_is_a_503_never_another_models_text(server):
    first = engine_pid(server.url, "tiny-gpt")
    assert first is not None
    os.kill(first, signal.SIGKILL)  # restarted once (--engine-restarts 1) ...
    assert wait_until(lambda: serves_again(server.url, first), timeout=BACK_WITHIN_S, interval=0.1)
    second = engine_pid(server.url, "tiny-gpt")
    assert second is not None
    os.kill(second, signal.SIGKILL)  # ... and a second death within 5 minutes is a crash loop

    def failed() -> dict[str, Any] | None:
        models = httpx.get(f"{server.url}/admin/models", headers=ADMIN, timeout=10).json()["models"]
        gpt = next(m for m in models if m["name"] == "tiny-gpt")
        return gpt if gpt["status"] == "failed" and "crash loop" in str(gpt["error"]) else None

    assert wait_until(lambda: failed() is not None, timeout=30), server.output()[-3000:]
    expected = ("crash loop: its engine failed 2 times in 5 minutes; the last time: the engine process of model "
                "tiny-gpt exited unexpectedly (killed by SIGKILL)")
    assert (failed() or {}).get("error") == expected
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "default_not_ready"
    assert "crash loop" in ready.json()["reason"] and ready.json()["ready_models"] == ["tiny-lstm"]
    for _ in range(6):  # over fresh connections: both front ends
        unnamed = httpx.post(f"{server.url}/generate", json={"inputs": "the ", "parameters": {"max_new_tokens": 5}},
                             timeout=30)
        assert unnamed.status_code == 503 and unnamed.headers["retry-after"], unnamed.text
        assert "model 'tiny-gpt' failed: crash loop" in unnamed.json()["error"]
        named = httpx.post(f"{server.url}/generate", json={"inputs": "the ", "model": "tiny-lstm",
                                                           "parameters": {"max_new_tokens": 5}}, timeout=30)
        assert named.status_code == 200 and named.headers["x-charlm-model"] == "tiny-lstm"
    assert httpx.post(f"{server.url}/admin/reload", headers=ADMIN, timeout=60).json()["loaded"] == ["tiny-gpt"]
    assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200


def front_end_pids(server: ServerProcess) -> list[int]:
    return [pid for pid in load.process_tree(server.process.pid) if "charlm: front end" in command_line(pid)]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections on `port` held by process `pid` (its sockets' inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, state, inode = int(fields[1].split(":")[1], 16), fields[3], fields[9]
        count += local_port == port and state == "01" and inode in inodes
    return count


async def streams_over_both_front_ends(server: ServerProcess, chars: int) -> None:
    """Stream `chars` characters per request until both front ends hold at least one stream; then kill
    the one with fewer: its streams are cut with its connections, every other stream finishes."""
    port, fronts = int(server.url.rsplit(":", 1)[1]), front_end_pids(server)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:
        body = {"inputs": "the ", "model": "tiny-gpt", "parameters": {"max_new_tokens": chars, "seed": 3}}
        streams: list[asyncio.Task[str]] = []
        while len(streams) < 64 and min(counts := [connections_to(pid, port) for pid in fronts]) == 0:
            streams += [asyncio.create_task(stream_to_end(http, server.url, body)) for _ in range(8)]
            await asyncio.sleep(0.5)
        assert min(counts) > 0, f"64 streams and one front end held none: {counts}"
        victim = fronts[counts.index(min(counts))]
        survivors = len(streams) - min(counts)
        os.kill(victim, signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*streams), 120)
    assert outcomes.count("finished") == survivors and outcomes.count("cut") == len(streams) - survivors, outcomes


async def stream_to_end(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> str:
    try:
        text = await load.checked_stream(http, url, body)
    except httpx.TransportError:
        return "cut"
    return "finished" if len(text) == body["parameters"]["max_new_tokens"] else "short"


def test_a_killed_front_end_is_replaced_and_the_other_front_ends_streams_finish(server):
    assert wait_until(lambda: len(front_end_pids(server)) == 2, timeout=60), server.output()[-3000:]
    fronts = front_end_pids(server)
    asyncio.run(streams_over_both_front_ends(server, chars=4000))
    assert wait_until(lambda: len(now := front_end_pids(server)) == 2 and now != fronts, timeout=60), \
        server.output()[-3000:]
    assert httpx.post(f"{server.url}/generate", json=SEEDED, timeout=30).status_code == 200


def test_a_killed_supervisor_leaves_no_process_within_5_s(two_models):
    with serve_process("--models-dir", str(two_models), "--default-model", "tiny-gpt", "--workers", "2",
                       "--models-poll-s", "0") as running:
        running.wait_healthy()
        tree = load.process_tree(running.process.pid)
        assert len(tree) >= 5, [load.describe(pid) for pid in tree]  # supervisor, 2 front ends, 2 engines
        running.process.kill()
        running.process.wait(10)
        assert wait_until(lambda: not any(alive(pid) for pid in tree), timeout=5), \
            [load.describe(pid) for pid in tree if alive(pid)]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
