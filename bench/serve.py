"""HTTP load: concurrent SSE clients against `charlm serve`, throughput and latency per concurrency.

    python bench/serve.py [--url http://127.0.0.1:8000] [--levels 1 8 32 64] [--chars 300] [--rounds 2]
                          [--procs 2] [--device auto] [--workers N] [--models-dir DIR] [--engine-baseline]
                          [--results results.jsonl]

Without --url it starts `charlm serve` on a free port (the bundled models, or --models-dir; max
batch size the largest level; --workers HTTP front ends) and stops it afterwards. Each of N clients
streams --rounds requests of --chars characters one after another from /generate_stream. The
clients are spread over --procs processes, so that the load generator is not the bottleneck, and
start together. Reports aggregate characters per second, time to first character and
inter-character latency (p50/p99, as the clients see them; characters that arrive in one piece
share its time), errors, and the CPU used, in cores (CPU seconds per second) and in microseconds
per delivered character: by the server's HTTP front ends (with the supervisor or control plane)
and by its engine processes, apart, and by the clients. With --engine-baseline, each level is also
measured in-process first (the same model's engine at that batch size, one thread, no HTTP; as
bench/engine.py), and the HTTP rate is given as a share of it. Writes a PNG plot. The clients speak
bare HTTP/1.1 over kept-alive connections, so that they cost little CPU beside the server.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from spawned import cpu_seconds, descendants, server_processes, spawned_process  # bench/, beside this script

DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "serve_bench.png"


@dataclasses.dataclass
class Level:
    concurrency: int
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


async def stream_once(connection: Connection, body: dict, level: Level) -> None:
    """One /generate_stream request: characters counted per event, each timed by when the piece of
    the body holding it arrived (characters that travel together arrive together)."""
    sent = time.perf_counter()
    last = None
    try:
        status = await connection.post("/generate_stream", json.dumps(body).encode())
        if status != 200:
            level.errors += 1
            connection.close()
            return
        pending = b""
        async for piece in connection.chunks():
            now = time.perf_counter()
            *events, pending = (pending + piece).split(b"\n\n")
            for event in events:
                if event.startswith(b'data: {"error"'):
                    level.errors += 1
                elif b'"special": false' in event or b'"special":false' in event:
                    level.chars += 1
                    if last is None:
                        level.first.append(now - sent)
                    else:
                        level.gaps.append(now - last)
                    last = now
    except (OSError, asyncio.IncompleteReadError, ValueError):
        level.errors += 1
        connection.close()


async def run_clients(url: str, indices: range, rounds: int, chars: int, model: str, start_at: float) -> Level:
    level = Level(len(indices))
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def client_loop(index: int) -> None:
        connection = Connection(host, int(port))
        for round_ in range(rounds):
            body = {"inputs": "ROMEO:\n", "model": model,
                    "parameters": {"max_new_tokens": chars, "temperature": 0.8, "seed": index * 1000 + round_}}
            await stream_once(connection, body, level)
        connection.close()

    await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts together
    cpu = time.process_time()
    await asyncio.gather(*(client_loop(i) for i in indices))
    level.seconds = time.time() - start_at  # this process's end
    level.client_cpu_s = time.process_time() - cpu
    return level


def client_process(url: str, indices: range, rounds: int, chars: int, model: str, start_at: float) -> Level:
    return asyncio.run(run_clients(url, indices, rounds, chars, model, start_at))


def run_level(pool: concurrent.futures.Executor, procs: int, url: str, concurrency: int, rounds: int,
              chars: int, model: str) -> Level:
    """`concurrency` clients over up to `procs` processes; the level ends when the last one does."""
    shares = [range(p, concurrency, procs) for p in range(min(procs, concurrency))]
    start_at = time.time() + 0.5
    futures = [pool.submit(client_process, url, share, rounds, chars, model, start_at) for share in shares]
    level = Level(concurrency)
    for future in futures:
        part = future.result()
        level.merge(part)
        level.seconds = max(level.seconds, part.seconds)
    return level


def plot(levels: list[Level], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    xs = [lv.concurrency for lv in levels]
    left.plot(xs, [lv.rate for lv in levels], marker="o")
    left.set(xlabel="concurrent streams", ylabel="characters / s (aggregate)", xscale="log", title="throughput")
    for values, label in ((lambda lv: lv.first, "first character"), (lambda lv: lv.gaps, "between characters")):
        for q, style in ((50, "-"), (99, "--")):
            right.plot(xs, [lv.percentile(values(lv), q) for lv in levels], style, marker=".", label=f"{label} p{q}")
    right.set(xlabel="concurrent streams", ylabel="ms", xscale="log", yscale="log", title="latency")
    right.legend(fontsize=8)
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def report(level: Level, args: argparse.Namespace) -> None:
    def cores(cpu_s: float | None) -> str:
        return "—" if cpu_s is None else f"{cpu_s / level.seconds:.2f}"

    def per_char(cpu_s: float | None) -> str:
        return "—" if cpu_s is None else f"{cpu_s / level.chars * 1e6:.1f}"

    engine = level.engine_rate
    baseline = "—" if engine is None else f"{engine:,.0f} ({level.rate / engine:.2f})"
    front, engines = level.front_end_cpu_s, level.engine_cpu_s
    print(f"| {level.concurrency} | {level.rate:,.0f} | {baseline} | {level.percentile(level.first, 50):.1f} / "
          f"{level.percentile(level.first, 99):.1f} | {level.percentile(level.gaps, 50):.2f} / "
          f"{level.percentile(level.gaps, 99):.2f} | {cores(front)} / {per_char(front)} "
          f"| {cores(engines)} / {per_char(engines)} | {level.client_cpu_s / level.seconds:.2f} "
          f"| {level.errors} |", flush=True)
    if args.results:
        row = {"bench": "serve", "model": args.model, "device": args.device, "workers": args.workers,
               "streams": level.concurrency, "chars_per_s": level.rate, "engine_chars_per_s": level.engine_rate,
               "first_p50_ms": level.percentile(level.first, 50), "gap_p50_ms": level.percentile(level.gaps, 50),
               "front_end_us_per_char": None if level.front_end_cpu_s is None else
               level.front_end_cpu_s / level.chars * 1e6,
               "engine_us_per_char": None if level.engine_cpu_s is None else level.engine_cpu_s / level.chars * 1e6,
               "client_cores": level.client_cpu_s / level.seconds, "errors": level.errors}
        with args.results.open("a") as out:
            out.write(json.dumps(row) + "\n")


def roles_of(pid: int | None) -> dict[str, list[int]]:
    """A server started elsewhere, with one front end: the process itself, and its engines below it."""
    return {"front_ends": [pid], "engines": descendants(pid)[1:]} if pid else {}


def engine_baselines(args: argparse.Namespace) -> dict[int, float]:
    """Characters per second of the same model's engine in this process, at each level's batch size
    (one thread, no HTTP; the device, dtype and compiling the server's settings choose), measured
    before the server starts."""
    import torch
    from engine import EndsSink, engine_rate  # bench/engine.py

    from charlm.checkpoint import load_model
    from charlm.generation import prompt_ids
    from service.control.registry import resolve_device, resolve_dtype
    from service.engine.engine import Engine
    from service.settings import Settings

    torch.set_num_threads(1)
    settings = Settings(device=args.device)  # CHARLM_DTYPE and CHARLM_COMPILE read as the server reads them
    device = resolve_device(settings.device)
    loaded = load_model(Path(args.models_dir) / args.model, device=device, dtype=resolve_dtype(settings.dtype, device))
    ids = prompt_ids(loaded.vocab, "ROMEO:\n")
    rates = {}
    for batch in args.levels:
        engine = Engine(args.model, loaded.model, loaded.vocab, batch, batch, sink=EndsSink(),
                        compile_step=None if settings.compile else False)
        engine.start()
        engine_rate(engine, ids, batch, min(args.chars, 20))
        rates[batch] = engine_rate(engine, ids, batch, args.chars)
        engine.close()
        engine.join()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", default="shakespeare-gpt")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--device", default="auto", help="the started server's --device")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--results", type=Path, help="append one JSON line per level to this file")
    parser.add_argument("--workers", type=int, default=1, help="the started server's HTTP front ends")
    parser.add_argument("--models-dir", default="models", help="the started server's models")
    parser.add_argument("--engine-baseline", action="store_true", help="measure each level in-process too")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process (one front end), whose "
                        "children are its engines, for the CPU columns")
    parser.add_argument("--serve-flags", default="", help="more flags for the started server, e.g. "
                        "'--engine-process false --stream-interval 4'")
    args = parser.parse_args()
    baselines = engine_baselines(args) if args.engine_baseline else {}
    flags = ("--max-batch-size", str(max(args.levels)), "--max-queued", "4096", "--device", args.device,
             "--workers", str(args.workers), "--models-dir", args.models_dir, "--max-new-tokens",
             str(max(4096, args.chars)), *args.serve_flags.split())
    server = contextlib.nullcontext((args.url, None)) if args.url else spawned_process(*flags)
    levels = []
    with server as (url, process), concurrent.futures.ProcessPoolExecutor(args.procs) as pool:
        run_level(pool, args.procs, url, min(args.procs, 4), 1, 20, args.model)  # warm connections and workers
        print("| streams | characters / s | in-process engine (HTTP share) | first char p50 / p99 (ms) "
              "| between chars p50 / p99 (ms) | front ends: cores / µs per char | engines: cores / µs per char "
              "| client cores | errors |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for concurrency in args.levels:
            roles = server_processes(url, process.pid) if process else roles_of(args.server_pid)
            before = {role: cpu_seconds(pids) for role, pids in roles.items()}
            level = run_level(pool, args.procs, url, concurrency, args.rounds, args.chars, args.model)
            if roles:
                level.front_end_cpu_s = cpu_seconds(roles["front_ends"]) - before["front_ends"]
                level.engine_cpu_s = cpu_seconds(roles["engines"]) - before["engines"]
            level.engine_rate = baselines.get(concurrency)
            levels.append(level)
            report(level, args)
    plot(levels, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
