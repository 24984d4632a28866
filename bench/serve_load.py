"""The load generator of bench/serve.py: N clients, spread over a few processes, each streaming
requests one after another from one of the server's streaming APIs.

    run_level → client_process (one per process) → run_clients → stream_once per request
              → the API's count per SSE event → Level (characters, first-character and between-character times)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

ERROR = -1  # what an API's count says of an event that reports an error
# One user message, and the same text as the bundled models' chat template (a play) renders it, so
# that /v1/completions and /v1/chat/completions generate from the same prompt.
CHAT_MESSAGE = "Good morrow, fair Juliet. What news?"
CHAT_PROMPT = f"ROMEO:\n{CHAT_MESSAGE}\n\nJULIET:\n"
NEVER = "@@"  # a stop string the models never write: it replaces the chat's default stop, so both run to length


@dataclasses.dataclass
class Level:
    concurrency: int
    api: str = "tgi"
    chars: int = 0
    errors: int = 0
    seconds: float = 0.0
    front_end_cpu_s: float | None = None  # the server's HTTP side (front ends, supervisor or control plane)
    engine_cpu_s: float | None = None
    engine_rate: float | None = None  # the same engine in-process, at this batch size
    client_cpu_s: float = 0.0
    first: list[float] = dataclasses.field(default_factory=list)
    gaps: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.chars / self.seconds

    def percentile(self, values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")

    def merge(self, other: Level) -> None:
        self.chars += other.chars
        self.errors += other.errors
        self.first += other.first
        self.gaps += other.gaps
        self.client_cpu_s += other.client_cpu_s


def tgi_body(model: str, chars: int, seed: int) -> dict[str, Any]:
    return {"inputs": "ROMEO:\n", "model": model,
            "parameters": {"max_new_tokens": chars, "temperature": 0.8, "seed": seed}}


def tgi_count(event: bytes) -> int:
    """One event per generated character (its token not special)."""
    if event.startswith(b'data: {"error"'):
        return ERROR
    return 1 if b'"special": false' in event or b'"special":false' in event else 0


def openai_body(model: str, chars: int, seed: int) -> dict[str, Any]:
    return {"model": model, "temperature": 0.8, "seed": seed, "stop": NEVER, "stream": True,
            "stream_options": {"include_usage": True}}


def completions_body(model: str, chars: int, seed: int) -> dict[str, Any]:
    return {**openai_body(model, chars, seed), "prompt": CHAT_PROMPT, "max_tokens": chars}


def chat_body(model: str, chars: int, seed: int) -> dict[str, Any]:
    return {**openai_body(model, chars, seed), "messages": [{"role": "user", "content": CHAT_MESSAGE}],
            "max_completion_tokens": chars}


def openai_count(event: bytes) -> int:
    """The characters of a chunk: a completion's text, or a chat delta's content, in every choice."""
    if not event.startswith(b"data: {"):  # [DONE]
        return 0
    data = json.loads(event[6:])
    if "error" in data:
        return ERROR
    return sum(len(c.get("text") or c.get("delta", {}).get("content") or "") for c in data["choices"])


@dataclasses.dataclass(frozen=True)
class Api:
    """A streaming route: its path, a request's body (model, characters, seed), the characters an event carries."""
    path: str
    body: Callable[[str, int, int], dict[str, Any]]
    count: Callable[[bytes], int]


APIS = {
    "tgi": Api("/generate_stream", tgi_body, tgi_count),
    "completions": Api("/v1/completions", completions_body, openai_count),
    "chat": Api("/v1/chat/completions", chat_body, openai_count),
}


class Connection:
    """A bare HTTP/1.1 client over one kept-alive connection: a load generator built on a full
    client library spends more CPU per event than the server does, and on a small machine it
    competes with the server for the same cores."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        """Send the request; the response's status (its headers are read)."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        assert self.reader is not None
        headers = await self.reader.readuntil(b"\r\n\r\n")
        return int(headers.split(b" ", 2)[1])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body of a chunked response, piece by piece as it arrives."""
        assert self.reader is not None
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def stream_once(connection: Connection, api: Api, body: dict[str, Any], level: Level) -> None:
    """One streamed request: characters counted per event, each timed by when the piece of the body
    holding it arrived (characters that travel together arrive together: after the first, 0 apart)."""
    sent = time.perf_counter()
    last = None
    try:
        status = await connection.post(api.path, json.dumps(body).encode())
        if status != 200:
            level.errors += 1
            connection.close()
            return
        pending = b""
        async for piece in connection.chunks():
            now = time.perf_counter()
            *events, pending = (pending + piece).split(b"\n\n")
            for event in events:
                count = api.count(event)
                if count == ERROR:
                    level.errors += 1
                elif count:
                    level.chars += count
                    if last is None:
                        level.first.append(now - sent)
                    else:
                        level.gaps.append(now - last)
                    level.gaps += [0.0] * (count - 1)
                    last = now
    except (OSError, asyncio.IncompleteReadError, ValueError):
        level.errors += 1
        connection.close()


async def run_clients(url: str, api: str, indices: range, rounds: int, chars: int, model: str,
                      start_at: float) -> Level:
    level = Level(len(indices), api)
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def client_loop(index: int) -> None:
        connection = Connection(host, int(port))
        for round_ in range(rounds):
            await stream_once(connection, APIS[api], APIS[api].body(model, chars, index * 1000 + round_), level)
        connection.close()

    await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts together
    cpu = time.process_time()
    await asyncio.gather(*(client_loop(i) for i in indices))
    level.seconds = time.time() - start_at  # this process's end
    level.client_cpu_s = time.process_time() - cpu
    return level


def client_process(url: str, api: str, indices: range, rounds: int, chars: int, model: str,
                   start_at: float) -> Level:
    return asyncio.run(run_clients(url, api, indices, rounds, chars, model, start_at))


def run_level(pool: concurrent.futures.Executor, procs: int, url: str, api: str, concurrency: int, rounds: int,
              chars: int, model: str) -> Level:
    """`concurrency` clients over up to `procs` processes; the level ends when the last one does."""
    shares = [range(p, concurrency, procs) for p in range(min(procs, concurrency))]
    start_at = time.time() + 0.5
    futures = [pool.submit(client_process, url, api, share, rounds, chars, model, start_at) for share in shares]
    level = Level(concurrency, api)
    for future in futures:
        part = future.result()
        level.merge(part)
        level.seconds = max(level.seconds, part.seconds)
    return level
