"""HTTP load: concurrent SSE clients against `charlm serve`, throughput and latency per concurrency.

    python bench/serve.py [--url http://127.0.0.1:8000] [--levels 1 8 32 64] [--chars 300] [--rounds 2]
                          [--api tgi|completions|chat ...] [--repeats 1] [--procs 2] [--device auto]
                          [--workers N] [--models-dir DIR] [--engine-baseline] [--results results.jsonl]

Without --url it starts `charlm serve` on a free port (the bundled models, or --models-dir; max
batch size the largest level; --workers HTTP front ends) and stops it afterwards. Each of N clients
streams --rounds requests of --chars characters one after another from /generate_stream (--api
tgi), /v1/completions or /v1/chat/completions (completions and chat: one user message, and as the
completions prompt the same text rendered as the bundled models' play template renders it; a stop
string never written, so that both run to length). With several APIs, each level measures every
API in turn, --repeats times, the order reversed every other repeat, so that a shared machine's noise
falls on all alike; a summary then gives medians and ranges, and each API against the first per
repeat. The clients are spread over --procs processes, so that the load generator is not the
bottleneck, and start together. Reports aggregate characters per second, time to first character
and inter-character latency (as the clients see them; characters that arrive in one piece share its
time), errors, and the CPU used, in cores (CPU seconds per second) and in microseconds per
delivered character: by the server's HTTP front ends (with the supervisor or control plane) and by
its engine processes, apart, and by the clients. With --engine-baseline, each level is also
measured in-process first (the same model's engine at that batch size, one thread, no HTTP; as
bench/engine.py), and the HTTP rate is given as a share of it. Writes a PNG plot. The clients speak
bare HTTP/1.1 over kept-alive connections, so that they cost little CPU beside the server
(bench/serve_load.py); bench/serve_report.py prints and draws.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import subprocess
import sys
from pathlib import Path

import httpx
from serve_load import APIS, Level, run_level  # bench/, beside this script
from serve_report import HEADER, plot, report, summary
from spawned import cpu_seconds, descendants, server_processes, spawned_process

DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "serve_bench.png"


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", default="shakespeare-gpt")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--api", nargs="+", choices=sorted(APIS), default=["tgi"],
                        help="the streaming routes to drive, each in turn at every level")
    parser.add_argument("--repeats", type=int, default=1, help="measurements of every level and API")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--device", default="auto", help="the started server's --device")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--results", type=Path, help="append one JSON line per measurement to this file")
    parser.add_argument("--workers", type=int, default=1, help="the started server's HTTP front ends")
    parser.add_argument("--models-dir", default="models", help="the started server's models")
    parser.add_argument("--engine-baseline", action="store_true", help="measure each level in-process too")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process (one front end), whose "
                        "children are its engines, for the CPU columns")
    parser.add_argument("--serve-flags", default="", help="more flags for the started server, e.g. "
                        "'--engine-process false --stream-interval 4'")
    return parser.parse_args()


def check_same_prompt(url: str, model: str) -> None:
    """Chat against completions is like with like only if the server renders the chat message as the
    completions prompt is written: their usage must count the same prompt characters."""
    counted = {}
    for api in ("completions", "chat"):
        body = {**APIS[api].body(model, 1, 0), "stream": False, "stream_options": None}
        answer = httpx.post(f"{url}{APIS[api].path}", json=body, timeout=60)
        answer.raise_for_status()
        counted[api] = answer.json()["usage"]["prompt_tokens"]
    if counted["completions"] != counted["chat"]:
        raise SystemExit(f"the chat's prompt is not the completions prompt ({counted['chat']} characters against "
                         f"{counted['completions']}): the model's chat template is not the play's")


def measure(pool: concurrent.futures.Executor, args: argparse.Namespace, url: str,
            process: subprocess.Popen | None, api: str, concurrency: int) -> Level:
    """One level with one API, with the CPU the server's processes used meanwhile, by role."""
    roles = server_processes(url, process.pid) if process else roles_of(args.server_pid)
    before = {role: cpu_seconds(pids) for role, pids in roles.items()}
    level = run_level(pool, args.procs, url, api, concurrency, args.rounds, args.chars, args.model)
    if roles:
        level.front_end_cpu_s = cpu_seconds(roles["front_ends"]) - before["front_ends"]
        level.engine_cpu_s = cpu_seconds(roles["engines"]) - before["engines"]
    if level.chars != concurrency * args.rounds * args.chars:  # a stop string, or an error, cut streams short
        print(f"{api}, {concurrency} streams: {level.chars:,} characters of {concurrency * args.rounds * args.chars:,}",
              file=sys.stderr)
    return level


def main() -> None:
    args = parse_args()
    baselines = engine_baselines(args) if args.engine_baseline else {}
    flags = ("--max-batch-size", str(max(args.levels)), "--max-queued", "4096", "--device", args.device,
             "--workers", str(args.workers), "--models-dir", args.models_dir, "--max-new-tokens",
             str(max(4096, args.chars)), *args.serve_flags.split())
    server = contextlib.nullcontext((args.url, None)) if args.url else spawned_process(*flags)
    levels = []
    with server as (url, process), concurrent.futures.ProcessPoolExecutor(args.procs) as pool:
        if {"completions", "chat"} <= set(args.api):
            check_same_prompt(url, args.model)
        for api in args.api:  # warm connections, workers and each route
            run_level(pool, args.procs, url, api, min(args.procs, 4), 1, 20, args.model)
        print(HEADER)
        for concurrency in args.levels:
            for repeat in range(args.repeats):
                for api in args.api[::-1] if repeat % 2 else args.api:
                    level = measure(pool, args, url, process, api, concurrency)
                    level.engine_rate = baselines.get(concurrency)
                    levels.append(level)
                    report(level, args)
    if len(args.api) > 1 or args.repeats > 1:
        print("\n" + "\n".join(summary(levels)))
    plot(levels, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
