"""Load scenarios against a running server: soak, disconnect storm, overload.

The tests run them with small budgets; `bench/reliability.py` runs the same code for longer.
Every stream is checked for well-formedness as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

FOREVER = 1_000_000  # max_new_tokens of a client that leaves before the end


def tgi_body(chars: int, seed: int | None = None, prompt: str = "the ") -> dict[str, Any]:
    parameters: dict[str, Any] = {"max_new_tokens": chars, "do_sample": True}
    if seed is not None:
        parameters["seed"] = seed
    return {"inputs": prompt, "parameters": parameters}


def client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    return httpx.AsyncClient(timeout=httpx.Timeout(120, connect=30), limits=limits)


class Refused(Exception):
    """The server answered a stream request with an error status instead of a stream."""

    def __init__(self, response: httpx.Response):
        super().__init__(f"status {response.status_code}: {response.text[:200]}")
        self.response = response


async def checked_stream(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> str:
    """Stream one generation; returns its text. Raises Refused for an error status, and
    AssertionError on anything malformed."""
    chars: list[str] = []
    async with aconnect_sse(http, "POST", f"{url}/generate_stream", json=body) as source:
        if source.response.status_code != 200:
            await source.response.aread()
            raise Refused(source.response)
        async for event in source.aiter_sse():
            data = json.loads(event.data)
            assert "error" not in data, data
            assert data["index"] == len(chars) + 1, f"index {data['index']} after {len(chars)} characters"
            chars.append(data["token"]["text"])
            if data["details"] is not None:
                break
    wanted = body["parameters"]["max_new_tokens"]
    assert data["details"]["finish_reason"] == "length", data["details"]
    assert data["generated_text"] == "".join(chars) and len(chars) == wanted, (len(chars), wanted)
    return "".join(chars)


@dataclasses.dataclass
class SoakReport:
    streams: int = 0
    chars: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


async def soak(url: str, clients: int, seconds: float, chars: int) -> SoakReport:
    """`clients` concurrent streaming clients, each starting a new stream as soon as one ends,
    until `seconds` have passed (streams in flight then finish)."""
    report = SoakReport()
    started = time.monotonic()

    async def one_client(http: httpx.AsyncClient, index: int) -> None:
        while time.monotonic() - started < seconds:
            try:
                text = await checked_stream(http, url, tgi_body(chars, seed=index))
                report.streams += 1
                report.chars += len(text)
            except (Refused, AssertionError, httpx.HTTPError, json.JSONDecodeError) as exc:
                report.errors.append(f"{type(exc).__name__}: {exc}")

    async with client(clients) as http:
        await asyncio.gather(*(one_client(http, i) for i in range(clients)))
    report.seconds = time.monotonic() - started
    return report


async def survivors_text(http: httpx.AsyncClient, url: str, seeds: list[int], chars: int) -> list[str]:
    return list(await asyncio.gather(*(checked_stream(http, url, tgi_body(chars, seed)) for seed in seeds)))


async def dropper(http: httpx.AsyncClient, url: str, rng: random.Random) -> str:
    """A client that leaves at a random moment once admitted: mid-stream after a few characters,
    or after a short wait that finds it queued or just started. Returns how it left."""
    mid_stream = rng.random() < 0.5
    events_before_leaving, wait_s = rng.randint(1, 30), rng.uniform(0, 0.3)
    async with aconnect_sse(http, "POST", f"{url}/generate_stream", json=tgi_body(FOREVER)) as source:
        assert source.response.status_code == 200, f"dropper refused: {source.response.status_code}"
        if not mid_stream:
            await asyncio.sleep(wait_s)
            return "early"
        seen = 0
        async for _ in source.aiter_sse():
            seen += 1
            if seen == events_before_leaving:
                break
    return "mid-stream"


@dataclasses.dataclass
class StormReport:
    baseline: list[str]
    stormy: list[str]
    ways_out: dict[str, int]
    seconds: float


async def disconnect_storm(url: str, droppers: int, seeds: list[int], chars: int, seed: int = 0) -> StormReport:
    """The survivors' seeded streams alone, then again among `droppers` clients that leave."""
    rng = random.Random(seed)
    async with client(droppers + len(seeds)) as http:
        baseline = await survivors_text(http, url, seeds, chars)
        started = time.monotonic()
        leaving = [dropper(http, url, random.Random(rng.random())) for _ in range(droppers)]
        results = await asyncio.gather(survivors_text(http, url, seeds, chars), *leaving)
    ways: dict[str, int] = {}
    for way in results[1:]:
        ways[way] = ways.get(way, 0) + 1
    return StormReport(baseline, results[0], ways, time.monotonic() - started)


@dataclasses.dataclass
class OverloadReport:
    completed: int = 0
    refused: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


async def overload(url: str, requests: int, chars: int) -> OverloadReport:
    """A burst of `requests` at once, half streaming: each is served in full or refused with 429
    and Retry-After before any work; anything else is a problem."""
    report = OverloadReport()

    def judge(response: httpx.Response, complete: Callable[[], bool]) -> None:
        if response.status_code == 429 and response.headers.get("retry-after") and "error" in response.json():
            report.refused += 1
        elif response.status_code == 200 and complete():
            report.completed += 1
        else:
            report.problems.append(f"{response.status_code}: {response.text[:200]}")

    async def one(http: httpx.AsyncClient, index: int) -> None:
        body = tgi_body(chars, seed=index)
        if index % 2:
            response = await http.post(f"{url}/generate", json=body)
            judge(response, lambda: len(response.json()["generated_text"]) == chars)
            return
        try:
            await checked_stream(http, url, body)
            report.completed += 1
        except Refused as refused:
            judge(refused.response, lambda: False)
        except AssertionError as exc:
            report.problems.append(str(exc))

    async with client(requests) as http:
        await asyncio.gather(*(one(http, i) for i in range(requests)))
    return report


# What the server reports about itself, and its resident memory.

def engine_counts(url: str) -> tuple[int, int]:
    """Sequences generating and waiting, over every model, as /health reports them."""
    models = httpx.get(f"{url}/health").json()["models"].values()
    return sum(m.get("active") or 0 for m in models), sum(m.get("queued") or 0 for m in models)


def idle(url: str) -> bool:
    return engine_counts(url) == (0, 0)


def cancelled(url: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("charlm_requests_cancelled_total"))


def resident_kib(pid: int) -> int | None:
    """A process's resident memory in KiB; None once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None  # a zombie: no memory left


def parent_pids() -> dict[int, int]:
    """Every process's parent, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)", which may hold spaces
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a server's engine processes, front ends, helpers)."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    tree, pending = [], [pid]
    while pending:
        tree.append(current := pending.pop())
        pending += children.get(current, [])
    return tree


def describe(pid: int) -> str:
    """A short name for a process of the tree: its pid and what it runs."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return f"{pid} (gone)"
    words = [word.decode(errors="replace") for word in argv if word]
    if words and words[0].startswith("charlm: "):  # a process of the server, titled (service.process_title)
        return f"{pid} ({words[0].strip()})"
    if any("spawn_main" in word for word in words):
        return f"{pid} (spawned child)"  # multiprocessing's: an engine, or its resource tracker
    if any("resource_tracker" in word for word in words):
        return f"{pid} (resource tracker)"
    return f"{pid} ({' '.join(words[1:4])[:60]})"


@dataclasses.dataclass
class MemoryReport:
    """Resident memory of a process tree, sampled over time: each process's and the total."""

    names: dict[int, str] = dataclasses.field(default_factory=dict)
    samples: list[dict[int, int]] = dataclasses.field(default_factory=list)  # pid -> KiB, per sample

    def series(self) -> dict[str, list[int]]:
        """Per process (those present in every sample) and "total" (all of them): KiB over time."""
        steady = set.intersection(*(set(sample) for sample in self.samples)) if self.samples else set()
        series = {self.names[pid]: [sample[pid] for sample in self.samples] for pid in sorted(steady)}
        return {**series, "total": [sum(sample.values()) for sample in self.samples]}

    def growth(self) -> dict[str, tuple[float, float]]:
        """For each series: the mean of its first quarter and of its last quarter, in KiB."""
        quarters = {}
        for name, values in self.series().items():
            quarter = max(1, len(values) // 4)
            quarters[name] = (sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter)
        return quarters

    def summary(self) -> str:
        return "; ".join(f"{name} {first / 1024:.1f} -> {last / 1024:.1f} MiB ({(last / first - 1) * 100:+.2f}%)"
                         for name, (first, last) in self.growth().items())


@contextlib.contextmanager
def sampled_memory(pid: int, every_s: float = 0.2) -> Iterator[MemoryReport]:
    """Sample the resident memory of `pid` and of every descendant, each `every_s` seconds."""
    report = MemoryReport()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            sizes = {p: kib for p in process_tree(pid) if (kib := resident_kib(p)) is not None}
            for p in sizes.keys() - report.names.keys():
                report.names[p] = describe(p)
            report.samples.append(sizes)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield report
    finally:
        done.set()
        thread.join(30)
