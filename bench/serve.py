"""HTTP load: concurrent SSE clients against `charlm serve`, throughput and latency per concurrency.

    python bench/serve.py [--url http://127.0.0.1:8000] [--levels 1 8 32 64] [--chars 300] [--rounds 2]
                          [--procs 2] [--device auto] [--results results.jsonl]

Without --url it starts `charlm serve` on a free port (bundled models, max batch size the largest
level) and stops it afterwards. Each of N clients streams --rounds requests of --chars characters
one after another from /generate_stream. The clients are spread over --procs processes, so that the
load generator is not the bottleneck, and start together. Reports aggregate characters per second,
time to first character and inter-character latency (p50/p99, as the clients see them), errors, and
the CPU the server used (cores: CPU seconds per second, for a server it started); writes a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from httpx_sse import aconnect_sse
from spawned import spawned_process  # bench/, beside this script

DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "serve_bench.png"


@dataclasses.dataclass
class Level:
    concurrency: int
    chars: int = 0
    errors: int = 0
    seconds: float = 0.0
    server_cores: float | None = None
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


async def stream_once(client: httpx.AsyncClient, url: str, body: dict, level: Level) -> None:
    sent = time.perf_counter()
    last = None
    try:
        async with aconnect_sse(client, "POST", f"{url}/generate_stream", json=body) as source:
            if source.response.status_code != 200:
                level.errors += 1
                return
            async for event in source.aiter_sse():
                now = time.perf_counter()
                data = json.loads(event.data)
                if "error" in data:
                    level.errors += 1
                    return
                if data["token"]["special"]:
                    continue
                level.chars += 1
                if last is None:
                    level.first.append(now - sent)
                else:
                    level.gaps.append(now - last)
                last = now
    except httpx.HTTPError:
        level.errors += 1


async def run_clients(url: str, indices: range, rounds: int, chars: int, model: str, start_at: float) -> Level:
    level = Level(len(indices))
    limits = httpx.Limits(max_connections=len(indices) + 4, max_keepalive_connections=len(indices) + 4)

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        for round_ in range(rounds):
            body = {"inputs": "ROMEO:\n", "model": model,
                    "parameters": {"max_new_tokens": chars, "temperature": 0.8, "seed": index * 1000 + round_}}
            await stream_once(client, url, body, level)

    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts together
        await asyncio.gather(*(client_loop(client, i) for i in indices))
    level.seconds = time.time() - start_at  # this process's end
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    cores = "—" if level.server_cores is None else f"{level.server_cores:.2f}"
    print(f"| {level.concurrency} | {level.rate:,.0f} | {level.percentile(level.first, 50):.1f} / "
          f"{level.percentile(level.first, 99):.1f} | {level.percentile(level.gaps, 50):.2f} / "
          f"{level.percentile(level.gaps, 99):.2f} | {cores} | {level.errors} |", flush=True)
    if args.results:
        row = {"bench": "serve", "model": args.model, "device": args.device, "streams": level.concurrency,
               "chars_per_s": level.rate, "first_p50_ms": level.percentile(level.first, 50),
               "gap_p50_ms": level.percentile(level.gaps, 50), "server_cores": level.server_cores,
               "errors": level.errors}
        with args.results.open("a") as out:
            out.write(json.dumps(row) + "\n")


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
    args = parser.parse_args()
    flags = ("--max-batch-size", str(max(args.levels)), "--max-queued", "4096", "--device", args.device)
    server = contextlib.nullcontext((args.url, None)) if args.url else spawned_process(*flags)
    levels = []
    with server as (url, process), concurrent.futures.ProcessPoolExecutor(args.procs) as pool:
        run_level(pool, args.procs, url, min(args.procs, 4), 1, 20, args.model)  # warm connections and workers
        print("| streams | characters / s | first char p50 / p99 (ms) | between chars p50 / p99 (ms) "
              "| server CPU (cores) | errors |")
        print("|---:|---:|---:|---:|---:|---:|")
        for concurrency in args.levels:
            before, started = (cpu_seconds(process.pid) if process else 0.0), time.time()
            level = run_level(pool, args.procs, url, concurrency, args.rounds, args.chars, args.model)
            if process:
                level.server_cores = (cpu_seconds(process.pid) - before) / (time.time() - started)
            levels.append(level)
            report(level, args)
    plot(levels, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
