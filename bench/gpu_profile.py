"""Where a decode step's GPU time goes: kernels per step and the most expensive ones, by attention
backend, and what torch.compile of the step would give. A diagnosis for the GPU check, not a gate.

    python bench/gpu_profile.py [--model random:gpt-baby] [--batch 256] [--dtype bfloat16] [--compile]
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from engine import load  # bench/, beside this script
from torch.nn.attention import SDPBackend

import charlm.models.base as base
from charlm.decoding import SlotDecoder
from charlm.generation import prompt_ids
from charlm.graphs import try_capture
from charlm.sampling import SamplingParams
from service.control.registry import DTYPES


def filled_decoder(args: argparse.Namespace) -> SlotDecoder:
    _, model, vocab = load(args.model, torch.device("cuda"), DTYPES[args.dtype])
    decoder = SlotDecoder(model, args.batch, graphs=False)
    with torch.inference_mode():
        for seed in range(args.batch):
            decoder.add(prompt_ids(vocab, "ROMEO:\n"), SamplingParams(temperature=0.8), seed)
        for _ in range(20):  # past the prompts
            decoder.launch().result()
    return decoder


def replay_ms(compute, steps: int = 200) -> float:  # type: ignore[no-untyped-def]
    graph = try_capture("profile", compute)
    run = graph.replay if graph is not None else compute
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


@torch.inference_mode()
def kernels(decoder: SlotDecoder, label: str) -> None:
    step = lambda: decoder._step(decoder.slots, None)  # noqa: E731
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    times: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.name] += event.device_time_total / 10
            counts[event.name] += 1
    total = sum(times.values())
    print(f"\n{label}: {sum(counts.values()) // 10} kernels per step, {total:.0f} us of kernel time per step, "
          f"{replay_ms(step):.3f} ms per replayed step")
    for name, micros in times.most_common(12):
        print(f"  {micros:8.1f} us  x{counts[name] // 10:<3d} {name[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:gpt-baby")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the step")
    args = parser.parse_args()
    decoder = filled_decoder(args)
    print(f"{args.model}, batch {args.batch}, {args.dtype}, {torch.cuda.get_device_name()}")
    kernels(decoder, "attention: flash / efficient / math (the default)")
    base.DECODE_SDPA_BACKENDS = [SDPBackend.MATH]
    kernels(decoder, "attention: math only")
    base.DECODE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    base.DECODE_ATTENTION = "bmm"
    kernels(decoder, "attention: two batched matrix products (DECODE_ATTENTION = 'bmm')")
    base.DECODE_ATTENTION = "sdpa"
    if args.compile:
        started = time.perf_counter()
        compiled = torch.compile(decoder._step, dynamic=False)
        with torch.inference_mode():
            compiled(decoder.slots, None)
            seconds = time.perf_counter() - started
            print(f"\ntorch.compile of the step: compiled in {seconds:.0f} s, "
                  f"{replay_ms(lambda: compiled(decoder.slots, None)):.3f} ms per replayed step")


if __name__ == "__main__":
    main()
