"""Training as a service against `charlm train`, and serving while a job trains.

    python bench/train_service.py [--part ratio serving] [--preset gpt-small] [--iters 300] [--rounds 3]
                                  [--serve-rounds 3] [--streams 32] [--train-threads N] [--torch-threads N]
                                  [--data FILE] [--results results.jsonl]

Starts `charlm serve` (bench/spawned.py) with the training API on, on a temporary copy of
models/shakespeare-gpt and a fresh temporary data directory, and measures:

- ratio: the same run, --preset on --data for --iters iterations (one evaluation at each end, of
  --eval-iters batches), by `charlm train` on the command line and as a job through the API (upload,
  create, wait until succeeded), taking turns --rounds times. The command line gets what a job
  gets: OMP_NUM_THREADS = the job's threads, the job's nice, a session of its own. Speed: the median of the trainer's
  progress windows (bench/train_jobs.py), read from the run's --events file and from the job's
  metrics events alike.
- serving: first-character latency of --streams concurrent streams (bench/serve_load.py, as
  bench/serve.py runs it, /generate_stream) with no job, and while a long job of --preset trains
  (started, past its first evaluation, cancelled afterwards), taking turns --serve-rounds times.

Prints Markdown tables; docs/benchmarks.md ("Training while serving") holds the results.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from serve_load import Level, run_level  # bench/, beside this script
from spawned import cpu_seconds, server_processes, spawned_process
from train_jobs import TrainingClient, file_metrics, iterations_per_s

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from service.jobs.executors import NICENESS  # noqa: E402
from service.jobs.runs import default_train_threads  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL = "shakespeare-gpt"
LONG_RUN = 10_000_000  # iterations of the job trained beside serving: it is cancelled long before


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=("ratio", "serving"), default=["ratio", "serving"])
    parser.add_argument("--preset", default="gpt-small")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--iters", type=int, default=300, help="iterations of each ratio run")
    parser.add_argument("--eval-iters", type=int, default=10, help="batches of each evaluation")
    parser.add_argument("--rounds", type=int, default=3, help="ratio: command line and job, taking turns")
    parser.add_argument("--serve-rounds", type=int, default=3, help="serving: idle and training, taking turns")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--train-threads", type=int, default=0, help="CHARLM_TRAIN_THREADS; 0: the server's default")
    parser.add_argument("--torch-threads", type=int, default=0, help="CHARLM_TORCH_THREADS; 0: the server's default")
    parser.add_argument("--results", type=Path, help="append one JSON line per measurement to this file")
    return parser.parse_args()


def server(args: argparse.Namespace, workdir: Path) -> Any:
    """`charlm serve` with the training API, on a copy of the default model and an empty data directory."""
    models = workdir / "models"
    shutil.copytree(ROOT / "models" / MODEL, models / MODEL)
    flags = ["--training", "true", "--data-dir", str(workdir / "data"), "--models-dir", str(models),
             "--default-model", MODEL, "--max-batch-size", str(args.streams), "--max-queued", "4096",
             "--max-new-tokens", str(max(4096, args.chars)), "--device", "cpu"]
    for flag, value in (("--train-threads", args.train_threads), ("--torch-threads", args.torch_threads)):
        if value:
            flags += [flag, str(value)]
    return spawned_process(*flags)


def record(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.results:
        with args.results.open("a") as out:
            out.write(json.dumps(result) + "\n")


def run_settings(args: argparse.Namespace) -> dict[str, int]:
    return {"max_iters": args.iters, "eval_interval": args.iters, "eval_iters": args.eval_iters}


def cli_speed(args: argparse.Namespace, workdir: Path, index: int) -> float:
    """`charlm train` as a job runs it (service/jobs/executors.py): the job's threads, in a session of its
    own, niced; events to a file. The session matters where Linux groups scheduling by session
    (autogroup): a session competes as a whole, and a nice counts only within it."""
    threads = str(args.train_threads or default_train_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    events = workdir / f"cli-{index}.jsonl"
    command = [sys.executable, "-m", "charlm", "train", "--preset", args.preset, "--data", str(args.data),
               "--out", str(workdir / f"cli-{index}"), "--events", str(events), "--no-progress", "--device", "cpu"]
    for key, value in run_settings(args).items():
        command += ["--set", f"{key}={value}"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                          start_new_session=True, preexec_fn=lambda: os.nice(NICENESS))
    if done.returncode:
        raise SystemExit(f"charlm train failed ({done.returncode}): {done.stderr[-2000:]}")
    start = json.loads(events.read_text(encoding="utf-8").splitlines()[0])
    return iterations_per_s(file_metrics(events), start["chars_per_step"])


def job_speed(args: argparse.Namespace, client: TrainingClient, file_id: str) -> float:
    """The same run as a job, to its end (its model published and served)."""
    job = client.create(file_id, args.preset, run_settings(args))
    done = client.wait(job["id"], ("succeeded",), timeout_s=1800)
    return iterations_per_s(client.metrics(job["id"]), done["charlm"]["chars_per_step"])


def ratio_part(args: argparse.Namespace, workdir: Path) -> None:
    speeds: dict[str, list[float]] = {"command line": [], "job": []}
    with server(args, workdir) as (url, _):
        client = TrainingClient(url)
        file_id = client.upload(args.data)
        for round_ in range(args.rounds):
            for way in ("command line", "job")[:: -1 if round_ % 2 else 1]:
                speed = cli_speed(args, workdir, round_) if way == "command line" else job_speed(args, client, file_id)
                speeds[way].append(speed)
                print(f"round {round_ + 1}, {way}: {speed:.2f} iterations/s", flush=True)
                record(args, {"bench": "train_service", "part": "ratio", "round": round_ + 1, "way": way,
                              "preset": args.preset, "iterations_per_s": speed, "load": os.getloadavg()[0]})
    ratios = [job / cli for job, cli in zip(speeds["job"], speeds["command line"], strict=True)]
    threads = args.train_threads or default_train_threads()
    print(f"\n{args.preset}, {args.iters} iterations, {threads} thread(s), nice {NICENESS}, {args.rounds} rounds\n")
    print("| way | iterations / s, median (range) | job / command line, per round |\n|---|---:|---|")
    for way, values in speeds.items():
        shown = ", ".join(f"{r:.3f}" for r in ratios) if way == "job" else ""
        print(f"| {way} | {statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f}) | {shown} |")
    print(f"\njob / command line: {statistics.median(ratios):.3f} (median of rounds; target >= 0.95)")


def measure(pool: concurrent.futures.Executor, args: argparse.Namespace, url: str, pid: int,
            job_id: str | None) -> tuple[Level, float]:
    """One level of --streams, with the CPU of the server's processes by role; and the job's cores."""
    roles = server_processes(url, pid)
    if job_id:  # the run is a child of the server: not one of its front ends
        roles["training"] = [p for p in roles["front_ends"] if job_id.encode() in cmdline(p)]
        roles["front_ends"] = [p for p in roles["front_ends"] if p not in roles["training"]]
    before = {role: cpu_seconds(pids) for role, pids in roles.items()}
    level = run_level(pool, args.procs, url, "tgi", args.streams, args.requests, args.chars, MODEL)
    used = {role: cpu_seconds(pids) - before[role] for role, pids in roles.items()}
    level.front_end_cpu_s, level.engine_cpu_s = used["front_ends"], used["engines"]
    return level, used.get("training", 0.0) / level.seconds


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def training_level(pool: concurrent.futures.Executor, args: argparse.Namespace, url: str, pid: int,
                   client: TrainingClient, file_id: str) -> tuple[Level, float, float, float]:
    """A level while a long job trains: the level, the job's cores, and its iterations/s before and during."""
    settings = {"max_iters": LONG_RUN, "eval_interval": LONG_RUN, "eval_iters": args.eval_iters}
    job = client.create(file_id, args.preset, settings)
    before = client.wait_training(job["id"], windows=3, timeout_s=600)
    level, cores = measure(pool, args, url, pid, job["id"])
    during = [m for m in client.metrics(job["id"]) if m["step"] > before[-1]["step"]]
    client.cancel(job["id"])
    client.wait(job["id"], ("cancelled",), timeout_s=300)
    per_step = job["charlm"]["chars_per_step"]
    return level, cores, iterations_per_s(before, per_step), iterations_per_s(during or before[-1:], per_step)


SERVING_HEADER = ("| round | server | first char p50 / p95 (ms) | characters / s | front ends / engine / job (cores) "
                  "| job's iterations / s, before / during the streams |\n|---:|---|---:|---:|---:|---:|")


def serving_row(args: argparse.Namespace, round_: int, state: str, measured: tuple[Level, float, float, float]
                | tuple[Level, float]) -> float:
    """Print and record one measurement; its first-character p50 (ms)."""
    level, cores, *speeds = measured
    first = level.percentile(level.first, 50)
    shown = " / ".join(f"{s:.2f}" for s in speeds) or "—"
    front, engine = (level.front_end_cpu_s or 0) / level.seconds, (level.engine_cpu_s or 0) / level.seconds
    print(f"| {round_ + 1} | {state} | {first:.1f} / {level.percentile(level.first, 95):.1f} | {level.rate:,.0f} "
          f"| {front:.2f} / {engine:.2f} / {cores:.2f} | {shown} |", flush=True)
    record(args, {"bench": "train_service", "part": "serving", "round": round_ + 1, "state": state,
                  "streams": args.streams, "first_p50_ms": first, "first_p95_ms": level.percentile(level.first, 95),
                  "chars_per_s": level.rate, "errors": level.errors, "job_cores": cores,
                  "job_iterations_per_s": speeds, "load": os.getloadavg()[0]})
    return first


def serving_part(args: argparse.Namespace, workdir: Path) -> None:
    firsts: dict[str, list[float]] = {"idle": [], "training": []}
    print(SERVING_HEADER)
    with server(args, workdir) as (url, process), concurrent.futures.ProcessPoolExecutor(args.procs) as pool:
        client = TrainingClient(url)
        file_id = client.upload(args.data)
        run_level(pool, args.procs, url, "tgi", min(args.procs, 4), 1, 20, MODEL)  # warm connections and route
        for round_ in range(args.serve_rounds):
            for state in ("idle", "training")[:: -1 if round_ % 2 else 1]:
                measured = measure(pool, args, url, process.pid, None) if state == "idle" else \
                    training_level(pool, args, url, process.pid, client, file_id)
                firsts[state].append(serving_row(args, round_, state, measured))
    idle, busy = statistics.median(firsts["idle"]), statistics.median(firsts["training"])
    rounds = ", ".join(f"{b / i:.2f}" for i, b in zip(firsts["idle"], firsts["training"], strict=True))
    print(f"\nfirst char p50 at {args.streams} streams: idle {idle:.1f} ms, training {busy:.1f} ms (medians): "
          f"{busy / idle:.2f}x (target <= 2x); per round {rounds}")


def main() -> None:
    args = parse_args()
    print(f"train threads {args.train_threads or default_train_threads()} (CHARLM_TRAIN_THREADS), serving threads "
          f"{args.torch_threads or 'default'} (CHARLM_TORCH_THREADS), job nice +{NICENESS}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="charlm-train-service-") as tmp:
        for part in args.part:
            workdir = Path(tmp) / part
            workdir.mkdir()
            ratio_part(args, workdir) if part == "ratio" else serving_part(args, workdir)


if __name__ == "__main__":
    main()
