"""HTTP load: concurrent SSE clients against `charlm serve`, throughput and latency per concurrency.

    python bench/serve.py [--url http://127.0.0.1:8000] [--levels 1 8 32 64] [--chars 300] [--rounds 2]

Without --url it starts `charlm serve` on a free port (bundled models, --max-batch-size 64) and
stops it afterwards. Each of N clients streams --rounds requests of --chars characters one after
another from /generate_stream. Reports aggregate characters per second, time to first character
and inter-character latency (p50/p99, as the client sees them), and errors; writes a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from httpx_sse import aconnect_sse
from spawned import spawned_server  # bench/, beside this script

DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "serve_bench.png"


@dataclasses.dataclass
class Level:
    concurrency: int
    chars: int = 0
    errors: int = 0
    seconds: float = 0.0
    first: list[float] = dataclasses.field(default_factory=list)
    gaps: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.chars / self.seconds

    def percentile(self, values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


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


async def run_level(url: str, concurrency: int, rounds: int, chars: int, model: str) -> Level:
    level = Level(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        for round_ in range(rounds):
            body = {"inputs": "ROMEO:\n", "model": model,
                    "parameters": {"max_new_tokens": chars, "temperature": 0.8, "seed": index * 1000 + round_}}
            await stream_once(client, url, body, level)

    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, i) for i in range(concurrency)))
        level.seconds = time.perf_counter() - start
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", default="shakespeare-gpt")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args()
    flags = ("--max-batch-size", str(max(args.levels)), "--max-queued", "4096")
    server = contextlib.nullcontext(args.url) if args.url else spawned_server(*flags)
    levels = []
    with server as url:
        asyncio.run(run_level(url, 1, 1, 20, args.model))  # warm the connection path
        print("| streams | characters / s | first char p50 / p99 (ms) | between chars p50 / p99 (ms) | errors |")
        print("|---:|---:|---:|---:|---:|")
        for concurrency in args.levels:
            level = asyncio.run(run_level(url, concurrency, args.rounds, args.chars, args.model))
            levels.append(level)
            print(f"| {concurrency} | {level.rate:,.0f} | {level.percentile(level.first, 50):.1f} / "
                  f"{level.percentile(level.first, 99):.1f} | {level.percentile(level.gaps, 50):.2f} / "
                  f"{level.percentile(level.gaps, 99):.2f} | {level.errors} |", flush=True)
    plot(levels, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
