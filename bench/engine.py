"""In-process decode throughput of the batching engine, against the naive re-run-the-context loop.

    python bench/engine.py [--models models/shakespeare-gpt random:gpt-baby] [--device auto]
                           [--dtypes float32 bfloat16 auto] [--batches 1 8 32 64] [--chars 300]
                           [--threads N] [--rounds N] [--no-graphs] [--no-compile] [--attention auto|sdpa|bmm]
                           [--no-naive] [--no-step-alone] [--transformers] [--results results.jsonl]

For each model, dtype and batch size B, B seeded requests of --chars characters are submitted at
once to an engine with max_batch_size B; characters per second is B * chars / wall time. The naive
loop is how the inspirations' `generate` works, batched: for every character, run the whole
context (cropped to block_size) of all B rows through `forward` and sample from the last position
(on the device, no host synchronisation per character; attention without cuDNN's, as the engine's).
Recurrent models have no cropped context to re-run: their loop is left out. "step alone" is the
decoder's step with every row active and none of the engine's per-character bookkeeping. `random:PRESET`
(e.g. `random:gpt-baby`) is a randomly initialised model of a training preset's size with tinyshakespeare's
65 characters. With --rounds N every measurement is taken N times, the models taking turns, so that a
shared machine's slow spells fall on all of them alike; a second table gives the ranges.
The engine decodes as the server does (on CUDA: the step compiled, then captured; the Triton decode
attention kernel where it passes its self-check); `--no-compile` and `--attention sdpa` give the path
before those, for a baseline in the same run. `--dtypes auto` loads the model in float32 and lets the
engine time which dtype decodes faster (CHARLM_DTYPE=auto); its rows name the dtype chosen.
With --transformers, a GPT is also converted to transformers' GPT2LMHeadModel (logits checked to agree;
bench/transformers_peer.py) and its `generate` timed in the same run, at the same temperature (the
`bench` extra). Prints a Markdown table; with --results, appends one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from charlm.models import CharModel, base, build_model
from charlm.models.base import decode_attention
from charlm.sampling import SamplingParams, SamplingRows, sample
from charlm.vocab import Vocab
from service.control.registry import DTYPES
from service.engine.engine import Engine
from service.engine.events import StepEvents
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


class EndsSink:
    """What an engine hands an engine process's relay each turn, kept only for the sequences' ends:
    the engine's own cost, without a front end's."""

    def __init__(self) -> None:
        self.ends: queue.Queue[Finished] = queue.Queue()

    def accepted(self, requests: list[GenerationRequest]) -> None:
        pass

    def deliver(self, events: StepEvents) -> None:
        for end in events.finished:
            self.ends.put(end)


def engine_rate(engine: Engine, ids: list[int], batch: int, chars: int) -> float:
    """Characters per second for `batch` sequences of `chars` characters, submitted together."""
    sink = engine.sink
    assert isinstance(sink, EndsSink)
    requests = [GenerationRequest(ids, chars, SamplingParams(temperature=0.8, seed=seed)) for seed in range(batch)]
    start = time.perf_counter()
    engine.submit_all(requests)
    ends = [sink.ends.get(timeout=600) for _ in range(batch)]
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
def decoder_step_ms(model: CharModel, ids: list[int], batch: int, graphs: bool, compile: bool | None,
                    steps: int = 200, active: int | None = None, fixed_shape: bool = False) -> float:
    """The decode step alone, `active` rows of `batch` (default all) drawing, without the engine's
    bookkeeping: ms per step with the host waiting for each result, as the engine does."""
    from charlm.decoding import SlotDecoder

    decoder = SlotDecoder(model, batch, graphs=graphs, compile=compile, fixed_shape=fixed_shape)
    decoder.warm_up(ids)
    for seed in range(batch if active is None else active):
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


def measure(args: argparse.Namespace, spec: str, device: torch.device, dtype_name: str) -> list[dict[str, Any]]:
    """The rows of one model and dtype, at every batch size."""
    auto, rows = dtype_name == "auto", []
    for batch in args.batches:
        # Loaded for each batch: `dtype auto` converts the model in place to what it chose.
        name, model, vocab = load(spec, device, torch.float32 if auto else DTYPES[dtype_name])
        ids = prompt_ids(vocab, PROMPT)
        engine = Engine(name, model, vocab, batch, max_queued=batch, cuda_graphs=not args.no_graphs,
                        compile_step=False if args.no_compile else None, choose_dtype=auto, sink=EndsSink())
        engine.start()
        engine_rate(engine, ids, batch, min(args.chars, 20))  # first-use costs out of the way
        rate = engine_rate(engine, ids, batch, args.chars)
        graphs, memory = engine.cuda_graphed, engine.memory
        engine.close()
        engine.join()
        naive = naive_rate(model, ids, batch, args.chars) if model.context_size and not args.no_naive else None
        step_ms = None if args.no_step_alone else decoder_step_ms(model, ids, batch, not args.no_graphs,
                                                                      False if args.no_compile else None)
        peer = None
        if args.transformers and model.architecture == "gpt":
            from transformers_peer import convert, generate_rate  # bench/, beside this script

            peer = generate_rate(convert(model), ids, batch, args.chars)
        loop = "—" if naive is None else f"{naive:,.0f}"
        ratio = "—" if naive is None else f"{rate / naive:.1f}"
        shown = f"auto: {memory.get('dtype')}" if auto else dtype_name
        alone = "—" if step_ms is None else f"{step_ms:.3f}"
        print(f"| {name} | {shown} | {batch} | {rate:,.0f} | {1000 * batch / rate:.3f} | {alone} "
              f"| {loop} | {ratio} | {memory.get('decode_attention', '—')} | {memory.get('compile_s', 'no')} "
              f"| {memory.get('cpu_backend', '—')} | {'—' if peer is None else f'{peer:,.0f} ({rate / peer:.2f}x)'} |",
              flush=True)
        row = {"bench": "engine", "model": name, "device": str(device), "dtype": dtype_name, "batch": batch,
               "chars_per_s": rate, "ms_per_step": 1000 * batch / rate, "step_alone_ms": step_ms,
               "loop_chars_per_s": naive, "transformers_chars_per_s": peer,
               "cpu_backend": memory.get("cpu_backend"), "cuda_graphs": graphs, "compiled": memory.get("compiled"),
               "compile_s": memory.get("compile_s"), "decode_attention": memory.get("decode_attention"),
               "chosen_dtype": memory.get("dtype"), "dtype_reason": memory.get("dtype_reason")}
        rows.append(row)
        if args.results:
            with args.results.open("a") as out:
                out.write(json.dumps(row) + "\n")
    return rows


def print_ranges(rows: list[dict[str, Any]]) -> None:
    """Lowest to highest characters per second of each (model, dtype, batch) over the rounds."""
    print("\n| model | dtype | batch | engine characters / s, lowest to highest | rounds |")
    print("|---|---|---:|---:|---:|")
    groups: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["dtype"], row["batch"]), []).append(row)
    for (name, dtype_name, batch), group in groups.items():
        rates = sorted(r["chars_per_s"] for r in group)
        print(f"| {name} | {dtype_name} | {batch} | {rates[0]:,.0f} to {rates[-1]:,.0f} | {len(group)} |")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--models", nargs="+", default=["models/shakespeare-gpt"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=[*sorted(DTYPES), "auto"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU intra-op threads")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times, models in turn")
    parser.add_argument("--no-graphs", action="store_true", help="decode eagerly on CUDA")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    parser.add_argument("--no-step-alone", action="store_true", help="skip the step timed without the engine")
    parser.add_argument("--no-compile", action="store_true", help="the step as written (CHARLM_COMPILE=false)")
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "bmm"],
                        help="how GPT steps attend (charlm.models.base.DECODE_ATTENTION)")
    parser.add_argument("--transformers", action="store_true",
                        help="time transformers' GPT2LMHeadModel.generate on each GPT too (the bench extra)")
    parser.add_argument("--results", type=Path, help="append one JSON line per measurement to this file")
    args = parser.parse_args()
    if args.transformers and importlib.util.find_spec("transformers") is None:
        parser.error("--transformers needs transformers, which the bench extra installs: pip install 'charlm[bench]'")
    base.DECODE_ATTENTION = args.attention
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.set_num_threads(1)  # loading: the engine thread is then the only one with an OpenMP team
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{hardware}; torch {torch.__version__}; {args.chars} characters per sequence")
    print("| model | dtype | batch | engine characters / s | ms / step | step alone (ms) | naive loop characters / s "
          "| x loop | attention | compiled (s) | CPU step | transformers generate characters / s (engine x) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
    rows = []
    for _ in range(args.rounds):
        for spec in args.models:
            for dtype_name in args.dtypes:
                torch.set_num_threads(args.threads)
                rows += measure(args, spec, device, dtype_name)
    if args.rounds > 1:
        print_ranges(rows)


if __name__ == "__main__":
    main()
