"""In-process decode throughput of the batching engine, against the naive re-run-the-context loop.

    python bench/engine.py [--model models/shakespeare-gpt] [--chars 300] [--batches 1 8 32 64]

For each batch size B, B seeded requests of --chars characters are submitted at once to an
engine with max_batch_size B; characters per second is B * chars / wall time. The naive loop is
how the inspirations' `generate` works: for every character, run the whole context (cropped to
block_size) through `forward` and sample from the last position. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import queue
import time
from pathlib import Path

import torch

from charlm.checkpoint import load_model
from charlm.generation import prompt_ids
from charlm.models import CharModel
from charlm.sampling import SamplingBatch, SamplingParams, make_generator, sample
from service.engine import Engine
from service.sequences import Finished, GenerationRequest

PROMPT = "ROMEO:\n"


def engine_rate(engine: Engine, ids: list[int], batch: int, chars: int) -> float:
    """Characters per second for `batch` sequences of `chars` characters, submitted together."""
    done: queue.Queue[Finished] = queue.Queue()

    def on_events(events: list[object]) -> None:
        if isinstance(events[-1], Finished):
            done.put(events[-1])

    start = time.perf_counter()
    for seed in range(batch):
        engine.submit(GenerationRequest(ids, chars, SamplingParams(temperature=0.8, seed=seed), on_events))
    ends = [done.get(timeout=600) for _ in range(batch)]
    elapsed = time.perf_counter() - start
    assert all(end.generated_tokens == chars for end in ends)
    return batch * chars / elapsed


@torch.inference_mode()
def naive_rate(model: CharModel, ids: list[int], chars: int) -> float:
    """One sequence, the whole cropped context re-run for every character."""
    block = model.context_size or 256
    idx = torch.tensor([ids])
    generator, _ = make_generator(0)
    params = SamplingBatch.of([SamplingParams(temperature=0.8)], "cpu")
    start = time.perf_counter()
    for _ in range(chars):
        logits, _ = model(idx[:, -block:])
        next_id, _ = sample(logits[:, -1], params, [generator])
        idx = torch.cat([idx, next_id[:, None]], dim=1)
    return chars / (time.perf_counter() - start)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", type=Path, default=Path("models/shakespeare-gpt"))
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (all cores)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the engine thread is then the only one with an OpenMP team
    loaded = load_model(args.model)
    ids = prompt_ids(loaded.vocab, PROMPT)
    torch.set_num_threads(args.threads)
    rates = {}
    for batch in args.batches:
        engine = Engine(args.model.name, loaded.model, loaded.vocab, batch, max_queued=batch)
        engine.start()
        engine_rate(engine, ids, batch, min(args.chars, 20))  # first-use costs out of the way
        rates[batch] = engine_rate(engine, ids, batch, args.chars)
        engine.close()
        engine.join()
    naive = naive_rate(loaded.model, ids, args.chars)  # last: its thread's OpenMP team would compete
    print(f"{args.model.name}: {loaded.model.architecture}, {loaded.model.num_parameters():,} parameters, "
          f"context {loaded.model.context_size}; torch {torch.__version__}, {args.threads} threads, "
          f"{args.chars} characters per sequence")
    print("| batch | characters / s | ms / step | x naive single stream |")
    print("|---:|---:|---:|---:|")
    print(f"| naive loop, 1 | {naive:,.0f} | {1000 / naive:.2f} | 1.0 |")
    for batch, rate in rates.items():
        print(f"| {batch} | {rate:,.0f} | {1000 * batch / rate:.2f} | {rate / naive:.1f} |")


if __name__ == "__main__":
    main()
