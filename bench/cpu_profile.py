"""Where a CPU decode step's time goes: operators per step, time inside them, and the rest (Python).

    python bench/cpu_profile.py [--models models/*] [--batches 1 32] [--backends eager ...] [--steps 200]

For each model, backend (`charlm.cpu_step`) and batch size, a `SlotDecoder` with every row active,
20 characters in, is timed for ms per step (`launch().result()`, as the engine calls it), then
profiled over 20 steps with torch.profiler: how many operators a step calls (top level), the time
spent inside them, and what is left: Python, the decoder's bookkeeping, the profiler's own cost.
The floor is what one operator costs with nothing to compute (a 1-element add): operators per step
times the floor is the dispatch a step cannot avoid while it calls that many. One torch thread.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import torch
from engine import load  # bench/, beside this script

from charlm import cpu_step
from charlm.decoding import SlotDecoder
from charlm.generation import prompt_ids
from charlm.sampling import SamplingParams

BUNDLED = sorted(str(p) for p in Path("models").iterdir() if (p / "config.json").is_file())


def filled_decoder(model, vocab, batch: int):  # type: ignore[no-untyped-def]
    """A decoder of `batch` rows, all active, 20 characters in."""
    decoder = SlotDecoder(model, batch)
    with torch.inference_mode():
        decoder.warm_up(prompt_ids(vocab, "ROMEO:\n"))
        for seed in range(batch):
            decoder.add(prompt_ids(vocab, "ROMEO:\n"), SamplingParams(temperature=0.8), seed)
        for _ in range(20):
            decoder.launch().result()
    return decoder


@torch.inference_mode()
def ms_per_step(decoder: SlotDecoder, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        decoder.launch().result()
    return (time.perf_counter() - start) / steps * 1000


@torch.inference_mode()
def profiled(decoder: SlotDecoder, steps: int = 20) -> tuple[float, float, list[tuple[str, float, int]]]:
    """(operators per step, microseconds inside them per step, the 6 costliest operators)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(steps):
            decoder.launch().result()
    times: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for event in profile.events():
        if event.cpu_parent is None:
            times[event.name] += event.cpu_time_total / steps
            counts[event.name] += 1
    top = [(name, micros, round(counts[name] / steps)) for name, micros in times.most_common(6)]
    return sum(counts.values()) / steps, sum(times.values()), top


@torch.inference_mode()
def dispatch_floor_us(repeats: int = 20000) -> float:
    """Microseconds of one operator that computes nothing worth timing (a 1-element add)."""
    a, b = torch.zeros(1), torch.zeros(1)
    start = time.perf_counter()
    for _ in range(repeats):
        a.add_(b)
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=BUNDLED)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--backends", nargs="+", default=["eager"], choices=cpu_step.BACKENDS)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    floor = dispatch_floor_us()
    print(f"CPU, 1 thread, {os.cpu_count()} cores; torch {torch.__version__}; one operator's floor {floor:.1f} µs")
    print("| model | backend | batch | ms / step | ops / step | in ops (ms) | outside ops (ms) "
          "| ops x floor (ms) | costliest operators (µs per step, calls) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for spec in args.models:
        for backend in args.backends:
            os.environ["CHARLM_CPU_BACKEND"] = backend
            for batch in args.batches:
                name, model, vocab = load(spec, torch.device("cpu"), torch.float32)
                decoder = filled_decoder(model, vocab, batch)
                ms = sorted(ms_per_step(decoder, args.steps) for _ in range(3))[1]
                ops, inside, top = profiled(decoder)
                costly = ", ".join(f"{op} {us:.0f} ({calls})" for op, us, calls in top)
                print(f"| {name} | {decoder.report.get('cpu_backend', 'eager')} | {batch} | {ms:.3f} | {ops:.0f} "
                      f"| {inside / 1000:.3f} | {ms - inside / 1000:.3f} | {ops * floor / 1000:.3f} | {costly} |",
                      flush=True)


if __name__ == "__main__":
    main()
