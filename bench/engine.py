"""In-process decode throughput of the batching engine, against the naive re-run-the-context loop.

    python bench/engine.py [--models models/shakespeare-gpt random:gpt-baby] [--device auto]
                           [--dtypes float32 bfloat16] [--batches 1 8 32 64] [--chars 300]
                           [--threads N] [--rounds N] [--no-graphs] [--results results.jsonl]

For each model, dtype and batch size B, B seeded requests of --chars characters are submitted at
once to an engine with max_batch_size B; characters per second is B * chars / wall time. The naive
loop is how the inspirations' `generate` works, batched: for every character, run the whole
context (cropped to block_size) of all B rows through `forward` and sample from the last position
(on the device, no host synchronisation per character; attention without cuDNN's, as the engine's).
Recurrent models have no cropped context to re-run: their loop is left out. "step alone" is the
decoder's step with every row active and none of the engine's per-character bookkeeping. `random:PRESET`
(e.g. `random:gpt-baby`) is a randomly initialised model of a training preset's size with tinyshakespeare's
65 characters.
With --rounds N every measurement is taken N times, the models taking turns at each batch size, so
that a shared machine's slow spells fall on all of them alike; a second table gives the ranges.
Prints a Markdown table; with --results, appends one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import string
import time
from pathlib import Path
from typing import Any

import torch

from charlm.checkpoint import load_model
from charlm.generation import prompt_ids
from charlm.models import CharModel, build_model
from charlm.models.base import decode_attention
from charlm.sampling import SamplingParams, SamplingRows, sample
from charlm.vocab import Vocab
from service.control.registry import DTYPES
from service.engine.engine import Engine
from service.engine.sequences import Finished, GenerationRequest
from training.config import PRESETS

PROMPT = "ROMEO:\n"


def load(spec: str, device: torch.device, dtype: torch.dtype) -> tuple[str, CharModel, Vocab]:
    """A model directory, or `random:PRESET`: a fresh model of that training preset's size."""
    if spec.startswith("random:"):
        preset = PRESETS[spec.removeprefix("random:")]
        vocab = Vocab(sorted(set(string.ascii_letters + " \n!$&',-.3:;?")))  # tinyshakespeare's 65
        torch.manual_seed(0)
        model = build_model(preset.architecture, {**preset.model, "vocab_size": len(vocab)})
        return f"{spec.removeprefix('random:')} size (random)", model.to(device=device, dtype=dtype).eval(), vocab
    loaded = load_model(spec, device=device, dtype=dtype)
    return Path(spec).name, loaded.model, loaded.vocab


def engine_rate(engine: Engine, ids: list[int], batch: int, chars: int) -> float:
    """Characters per second for `batch` sequences of `chars` characters, submitted together."""
    done: queue.Queue[Finished] = queue.Queue()

    def on_events(events: list[object]) -> None:
        if isinstance(events[-1], Finished):
            done.put(events[-1])

    requests = [GenerationRequest(ids, chars, SamplingParams(temperature=0.8, seed=seed), on_events)
                for seed in range(batch)]
    start = time.perf_counter()
    engine.submit_all(requests)
    ends = [done.get(timeout=600) for _ in range(batch)]
    elapsed = time.perf_counter() - start
    assert all(end.generated_tokens == chars for end in ends), [end.error for end in ends]
    return batch * chars / elapsed


@torch.inference_mode()
def naive_rate(model: CharModel, ids: list[int], batch: int, chars: int) -> float:
    """`batch` sequences, the whole cropped context re-run for every character."""
    device = next(model.parameters()).device
    block = model.context_size
    assert block is not None
    idx = torch.tensor([ids] * batch, device=device)  # (B, T)
    params = [SamplingParams(temperature=0.8)] * batch
    rows = SamplingRows.of(params, model.config.vocab_size, device, list(range(batch)))
    synchronize(device)
    start = time.perf_counter()
    with decode_attention(device):
        for _ in range(chars):
            logits, _ = model(idx[:, -block:])  # (B, T, V)
            idx = torch.cat([idx, sample(logits[:, -1], rows).ids[:, None]], dim=1)
    synchronize(device)
    return batch * chars / (time.perf_counter() - start)


@torch.inference_mode()
def decoder_step_ms(model: CharModel, ids: list[int], batch: int, graphs: bool, steps: int = 200) -> float:
    """The decode step alone, every row active, without the engine's bookkeeping: ms per step
    with the host waiting for each result, as the engine does."""
    from charlm.decoding import SlotDecoder

    decoder = SlotDecoder(model, batch, graphs=graphs)
    decoder.warm_up(ids)
    for seed in range(batch):
        decoder.add(ids, SamplingParams(temperature=0.8), seed)
    for _ in range(10):
        decoder.launch().result()
    start = time.perf_counter()
    for _ in range(steps):
        decoder.launch().result()
    return (time.perf_counter() - start) / steps * 1000


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, name: str, model: CharModel, vocab: Vocab, dtype_name: str,
            batch: int) -> dict[str, object]:
    """One row of the table: the engine, the naive loop and the step alone at one batch size."""
    device = next(model.parameters()).device
    ids = prompt_ids(vocab, PROMPT)
    engine = Engine(name, model, vocab, batch, max_queued=batch, cuda_graphs=not args.no_graphs)
    engine.start()
    engine_rate(engine, ids, batch, min(args.chars, 20))  # first-use costs out of the way
    rate = engine_rate(engine, ids, batch, args.chars)
    graphs = engine.cuda_graphed
    engine.close()
    engine.join()
    naive = naive_rate(model, ids, batch, args.chars) if model.context_size and not args.no_naive else None
    step_ms = decoder_step_ms(model, ids, batch, not args.no_graphs)
    loop = "—" if naive is None else f"{naive:,.0f}"
    ratio = "—" if naive is None else f"{rate / naive:.1f}"
    print(f"| {name} | {dtype_name} | {batch} | {rate:,.0f} | {1000 * batch / rate:.3f} | {step_ms:.3f} "
          f"| {loop} | {ratio} |", flush=True)
    row = {"bench": "engine", "model": name, "device": str(device), "dtype": dtype_name, "batch": batch,
           "chars_per_s": rate, "ms_per_step": 1000 * batch / rate, "step_alone_ms": step_ms,
           "loop_chars_per_s": naive, "cuda_graphs": graphs}
    if args.results:
        with args.results.open("a") as out:
            out.write(json.dumps(row) + "\n")
    return row


def print_ranges(rows: list[dict[str, Any]]) -> None:
    """Lowest to highest characters per second of each (model, dtype, batch) over the rounds."""
    print("\n| model | dtype | batch | engine characters / s, lowest to highest | step alone (ms) | rounds |")
    print("|---|---|---:|---:|---:|---:|")
    groups: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["dtype"], row["batch"]), []).append(row)
    for (name, dtype_name, batch), group in groups.items():
        rates = sorted(r["chars_per_s"] for r in group)
        steps = sorted(r["step_alone_ms"] for r in group)
        print(f"| {name} | {dtype_name} | {batch} | {rates[0]:,.0f} to {rates[-1]:,.0f} "
              f"| {steps[0]:.3f} to {steps[-1]:.3f} | {len(group)} |")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--models", nargs="+", default=["models/shakespeare-gpt"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(DTYPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU intra-op threads")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times, models in turn")
    parser.add_argument("--no-graphs", action="store_true", help="decode eagerly on CUDA")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    parser.add_argument("--results", type=Path, help="append one JSON line per measurement to this file")
    args = parser.parse_args()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.set_num_threads(1)  # loading: the engine thread is then the only one with an OpenMP team
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{hardware}; torch {torch.__version__}; {args.chars} characters per sequence")
    print("| model | dtype | batch | engine characters / s | ms / step | step alone (ms) | naive loop characters / s "
          "| x loop |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    models = [(dtype_name, *load(spec, device, DTYPES[dtype_name]))
              for spec in args.models for dtype_name in args.dtypes]
    torch.set_num_threads(args.threads)
    rows = [measure(args, name, model, vocab, dtype_name, batch)
            for _ in range(args.rounds) for batch in args.batches for dtype_name, name, model, vocab in models]
    if args.rounds > 1:
        print_ranges(rows)


if __name__ == "__main__":
    main()
