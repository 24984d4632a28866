"""Where a decode step's GPU time goes: kernels per step, kernel time per step and the most expensive
kernels, for every bundled model, as served (compiled, decode attention chosen at startup) and as
before (the step as written, scaled dot-product attention). A diagnosis for the GPU check, not a gate.

    python bench/gpu_profile.py [--models models/* random:gpt-baby] [--batch 256] [--dtype bfloat16]
                                [--budget-s 150] [--steps 100] [--results FILE] [--device cuda|cpu]

Each model's step is profiled eagerly over 10 steps (the kernels a replayed graph holds), then its
graph is replayed for ms per step. A run stops starting new measurements once `--budget-s` seconds
have passed and says what it left out; every result is printed and appended as it is measured.
`--device cpu` runs the same code on a CPU (operators instead of kernels, nothing compiled): a dry
run that checks the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import json
import time
from pathlib import Path

import torch
from engine import load, synchronize  # bench/, beside this script

from charlm.decoding import SlotDecoder
from charlm.generation import prompt_ids
from charlm.graphs import prepare_step
from charlm.models import base
from charlm.sampling import SamplingParams
from service.control.registry import DTYPES
from training.config import PRESETS

BUNDLED = sorted(str(p) for p in Path("models").iterdir() if (p / "config.json").is_file())


@dataclasses.dataclass(frozen=True)
class Mode:
    label: str
    compile: bool
    attention: str  # charlm.models.base.DECODE_ATTENTION


MODES = [Mode("as served (compiled, attention auto)", True, "auto"),
         Mode("step as written, attention auto", False, "auto"),
         Mode("before: step as written, SDPA", False, "sdpa")]


def filled_decoder(model, vocab, batch: int, mode: Mode):  # type: ignore[no-untyped-def]
    """A decoder of `batch` rows, all active, 20 characters in; its model prepared as `mode` says."""
    base.DECODE_ATTENTION = mode.attention
    decoder = SlotDecoder(model, batch, graphs=False, compile=False)
    with torch.inference_mode():
        for seed in range(batch):
            decoder.add(prompt_ids(vocab, "ROMEO:\n"), SamplingParams(temperature=0.8), seed)
        for _ in range(20):
            decoder.launch().result()
    return decoder


def profiled(run, device: torch.device) -> tuple[int, float, list[tuple[str, float, int]]]:  # type: ignore[no-untyped-def]
    """(kernels per step, microseconds of kernel time per step, the 8 costliest kernels) over 10
    eager steps; on a CPU, operators and their CPU time instead."""
    cuda = device.type == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    with torch.profiler.profile(activities=[activity]) as profile:
        for _ in range(10):
            run()
        synchronize(device)
    times: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for event in profile.events():
        if event.device_type == kind and (cuda or event.cpu_parent is None):
            times[event.name] += (event.device_time_total if cuda else event.cpu_time_total) / 10
            counts[event.name] += 1
    top = [(name, micros, counts[name] // 10) for name, micros in times.most_common(8)]
    return sum(counts.values()) // 10, sum(times.values()), top


def measure(spec: str, mode: Mode, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    name, model, vocab = load(spec, device, DTYPES[args.dtype])
    decoder = filled_decoder(model, vocab, args.batch, mode)
    cuda = device.type == "cuda"
    with torch.inference_mode():
        plain_step = decoder.runs[False, False]  # without sampling controls or grammar
        prepared = prepare_step(f"profile {name}", plain_step, compile=mode.compile and cuda, graph=cuda)
        kernels, micros, top = profiled(prepared.run, device)
        run = prepared.graph.replay if prepared.graph is not None else prepared.run
        for _ in range(5):
            run()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            run()
        synchronize(device)
    replay_ms = (time.perf_counter() - started) / args.steps * 1000
    unit = "kernels" if cuda else "operators"
    print(f"\n{name}, batch {args.batch}, {args.dtype}, {mode.label}: {kernels} {unit} per step, {micros:.0f} us of "
          f"{'kernel' if cuda else 'CPU'} time per step, {replay_ms:.3f} ms per {'replayed ' if cuda else ''}step"
          + (f", compiled in {prepared.compile_s:.0f} s" if mode.compile and cuda else "")
          + (f" (compile failed: {prepared.compile_error})" if prepared.compile_error else ""), flush=True)
    for kernel, time_us, count in top:
        print(f"  {time_us:8.1f} us  x{count:<3d} {kernel[:110]}", flush=True)
    return {"bench": "profile", "model": name, "mode": mode.label, "batch": args.batch, "dtype": args.dtype,
            "device": str(device), "kernels_per_step": kernels, "kernel_us_per_step": micros,
            "replay_ms": replay_ms, "compiled": prepared.compile_error is None and mode.compile and cuda,
            "compile_s": prepared.compile_s, "decode_attention": decoder.report.get("decode_attention")}


def architecture_of(spec: str) -> str:
    if spec.startswith("random:"):
        return PRESETS[spec.removeprefix("random:")].architecture
    return str(json.loads((Path(spec) / "config.json").read_text())["architecture"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["random:gpt-baby", *BUNDLED])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--budget-s", type=float, default=150.0, help="start no measurement after this many seconds")
    parser.add_argument("--results", type=Path, help="append one JSON line per measurement to this file")
    parser.add_argument("--steps", type=int, default=100, help="replayed steps timed")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.monotonic()
    print(f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (a dry run)'}; torch {torch.__version__}")
    for spec in args.models:
        modes = MODES if architecture_of(spec) == "gpt" else MODES[:2]  # recurrent models have one attention
        for mode in modes:
            if time.monotonic() - started > args.budget_s:
                print(f"\n{spec}, {mode.label}: not measured (the budget of {args.budget_s:.0f} s is spent)",
                      flush=True)
                continue
            row = measure(spec, mode, args, device)
            if args.results:
                with args.results.open("a") as out:
                    out.write(json.dumps(row) + "\n")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    base.DECODE_ATTENTION = "auto"


if __name__ == "__main__":
    main()
