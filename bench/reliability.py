"""Reliability runs with larger budgets than the test suite: soak, disconnect storm, overload, fuzzing,
and drains watched through the probes.

    python bench/reliability.py [soak|storm|overload|fuzz|drain|all] [--models-dir models] [--model shakespeare-gpt]
        [--soak-seconds 120] [--soak-warmup 100] [--soak-clients 64] [--droppers 1000] [--burst 500]
        [--fuzz-examples 1000] [--drain-runs 5]

Each scenario starts `charlm serve` as a separate process on the bundled models (one server per
scenario), runs the same code as tests/service/test_load.py and prints one summary line with its
figures; docs/reliability.md records them. The fuzz run is tests/service/test_fuzz_schema.py with
a larger example budget (it trains its own tiny models).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scenarios live beside the tests that run them small


from tests.service import drain, load  # noqa: E402
from tests.service.helpers import ServerProcess, serve_process, wait_until  # noqa: E402


@contextlib.contextmanager
def server(args: argparse.Namespace, *flags: str) -> Iterator[ServerProcess]:
    common = ("--models-dir", args.models_dir, "--default-model", args.model, "--log-level", "warning")
    with serve_process(*common, *flags) as process:
        process.wait_healthy(timeout=300)
        yield process


def run_soak(args: argparse.Namespace) -> None:
    with server(args, "--max-batch-size", str(args.soak_clients)) as process:
        asyncio.run(load.soak(process.url, args.soak_clients, args.soak_warmup, chars=200))
        with load.sampled_memory(process.process.pid, every_s=0.5) as memory:
            report = asyncio.run(load.soak(process.url, args.soak_clients, args.soak_seconds, chars=200))
        wait_until(lambda: load.idle(process.url), timeout=30)
        active, queued = load.engine_counts(process.url)
    print(f"soak: {args.soak_clients} clients for {report.seconds:.0f} s after {args.soak_warmup:.0f} s of warm-up: "
          f"{report.streams} streams, "
          f"{report.chars} chars ({report.chars / report.seconds:,.0f}/s), {len(report.errors)} errors; "
          f"after: {active} active, {queued} queued")
    print(f"  resident memory, first -> last quarter, of the server and each process under it: {memory.summary()}")
    for error in report.errors[:5]:
        print("  error:", error)


def run_storm(args: argparse.Namespace) -> None:
    flags = ("--max-batch-size", "32", "--max-queued", str(args.droppers + 64), "--max-new-tokens", str(load.FOREVER))
    with server(args, *flags) as process:
        before = load.cancelled(process.url)
        report = asyncio.run(load.disconnect_storm(process.url, args.droppers, list(range(16)), chars=100))
        wait_until(lambda: load.idle(process.url), timeout=60)
        active, queued = load.engine_counts(process.url)
        counted = load.cancelled(process.url) - before
    print(f"storm: {args.droppers} droppers ({report.ways_out}) among 16 seeded survivors in {report.seconds:.1f} s: "
          f"cancelled counted {counted:.0f}; after: {active} active, {queued} queued; "
          f"survivors identical to the calm run: {report.stormy == report.baseline}")


def run_overload(args: argparse.Namespace) -> None:
    with server(args, "--max-batch-size", "8", "--max-queued", "32") as process:
        started = time.monotonic()
        report = asyncio.run(asyncio.wait_for(load.overload(process.url, args.burst, chars=200), timeout=600))
        seconds = time.monotonic() - started
    print(f"overload: burst of {args.burst} against capacity 40 (8 running + 32 queued): {report.completed} served "
          f"in full, {report.refused} refused with 429 + Retry-After, {len(report.problems)} other in {seconds:.1f} s")
    for problem in report.problems[:5]:
        print("  problem:", problem)


def run_fuzz(args: argparse.Namespace) -> None:
    env = {**os.environ, "CHARLM_FUZZ_EXAMPLES": str(args.fuzz_examples)}
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/service/test_fuzz_schema.py"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    print(f"fuzz: {args.fuzz_examples} examples per route: {summary} ({time.monotonic() - started:.0f} s)")


def run_drain(args: argparse.Namespace) -> None:
    """SIGTERM during 16 streams, once with a drain timeout the streams fit in and once with one they
    overrun; each `--drain-runs` times, with a new server each time."""
    for grace, chars, flags in (("120", 600, ()), ("1", load.FOREVER, ("--max-new-tokens", str(load.FOREVER)))):
        latencies, completed, reasons, exits, drains = [], 0, set(), set(), []
        for _ in range(args.drain_runs):
            with server(args, "--max-batch-size", "16", "--shutdown-grace-s", grace, *flags) as process:
                report = drain.drain_during_streams(process, 16, chars)
            exited = time.monotonic()
            latencies.append(report.readiness_latency_s or float("nan"))
            completed += sum(end.reason == "length" for end in report.ends)
            reasons |= {end.reason for end in report.ends}
            exits.add(report.exit_code)
            drains.append(max(end.at for end in report.ends) - report.signalled_at)
            drains.append(exited - report.signalled_at)
        print(f"drain (timeout {grace} s, {args.drain_runs} runs of 16 streams): SIGTERM to readiness 503 "
              f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
              f"streams ended {sorted(reasons)} ({completed} of {16 * args.drain_runs} complete); exit codes "
              f"{sorted(exits, key=str)}; last stream end / exit after SIGTERM: up to {max(drains[0::2]):.1f} s / "
              f"{max(drains[1::2]):.1f} s")


SCENARIOS = {"soak": run_soak, "storm": run_storm, "overload": run_overload, "fuzz": run_fuzz, "drain": run_drain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--model", default="shakespeare-gpt")
    parser.add_argument("--soak-seconds", type=float, default=120)
    parser.add_argument("--soak-clients", type=int, default=64)
    parser.add_argument("--soak-warmup", type=float, default=100,
                        help="seconds of the same load before measuring (memory plateaus about 80 s from cold)")
    parser.add_argument("--droppers", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--fuzz-examples", type=int, default=1000)
    parser.add_argument("--drain-runs", type=int, default=5)
    args = parser.parse_args()
    for name, run in SCENARIOS.items():
        if args.scenario in (name, "all"):
            run(args)


if __name__ == "__main__":
    main()
