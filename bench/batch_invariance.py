"""What batch invariance holds on a CPU, and what the fixed-shape step would cost there.

    python bench/batch_invariance.py [--models models/shakespeare-gpt ...] [--threads 1] [--batch 25]
                                     [--steps 200] [--slots 32]

For each model: a row's step logits alone against the same row among `--batch - 1` others (every
row fed the same characters each step, so only the batch differs), with the active-rows step a CPU
uses and with the fixed-shape step CUDA uses (every step covers all `--slots` rows); from the
logits, how often a temperature-1 draw would part ways (the mean over steps of the summed shift of
the cumulative distribution's boundaries: the chance that the uniform number falls between a
boundary's two positions); then ms per step of both kinds of step at 1, 4, 16 and 32 active rows,
interleaved, best of three. docs/benchmarks.md records the results.
"""

from __future__ import annotations

import argparse

import torch
from engine import decoder_step_ms  # bench/, beside this script

from charlm.checkpoint import load_model
from charlm.decoding import SlotDecoder
from charlm.generation import prompt_ids
from charlm.models import CharModel
from charlm.sampling import SamplingParams

PROMPTS = {"pushkin": "Я помню чудное мгновенье"}
DEFAULT_PROMPT = "ROMEO:\nWhat light through yonder"


@torch.inference_mode()
def row_logits(model: CharModel, prompt: list[int], others: int, fixed: bool, slots: int, steps: int) -> torch.Tensor:
    """(steps, V): the logits of one row, among `others` rows with other prompts, all fed the
    greedy continuation of the first row alone (teacher forcing keeps the inputs equal)."""
    decoder = SlotDecoder(model, slots, graphs=False, fixed_shape=fixed)
    for seed in range(others // 2):
        decoder.add(prompt[: 2 + seed % 5], SamplingParams(), seed)
    row = decoder.add(prompt, SamplingParams(), 7)
    for seed in range(others - others // 2):
        decoder.add(prompt[: 3 + seed % 4], SamplingParams(), 100 + seed)
    out = []
    for _ in range(steps):
        active = decoder.active
        decoder._make_room(active)  # the decoder's own step, without sampling
        rows = decoder.slots if decoder.fixed else active
        filled = None if decoder.fixed or decoder.window is None else max(decoder.filled[:active]) + 1
        logits = model.step(decoder.tokens[:rows], decoder.state.narrow(0, rows), filled)  # (rows, V)
        if decoder.window is not None:
            decoder.filled[:active] = [f + 1 for f in decoder.filled[:active]]
        out.append(logits[row].clone())
        decoder.tokens[:rows] = logits[row].argmax()
    return torch.stack(out)  # (steps, V)


def flip_chance(alone: torch.Tensor, batched: torch.Tensor) -> float:
    """Mean over steps of the summed |shift| of the temperature-1 CDF's boundaries."""
    order = alone.argsort(dim=-1, descending=True)
    cdf_alone = alone.softmax(-1).gather(1, order).cumsum(-1)  # (steps, V)
    cdf_batched = batched.softmax(-1).gather(1, order).cumsum(-1)
    return float((cdf_alone - cdf_batched).abs()[:, :-1].sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["models/shakespeare-gpt", "models/shakespeare-lstm",
                                                        "models/pushkin-lstm-attention",
                                                        "models/shakespeare-gpt-large"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the server's on 2 cores: 1)")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--slots", type=int, default=32, help="max_batch_size (a CPU's default: 32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | max logit gap, active rows | flips per 1,000 draws | fixed shape | ms/step active vs fixed "
          "at 1 / 4 / 16 / 32 rows |")
    print("|---|---:|---:|---:|---|")
    for path in args.models:
        loaded = load_model(path)
        name = path.rstrip("/").rsplit("/", 1)[-1]
        prompt = prompt_ids(loaded.vocab, next((p for k, p in PROMPTS.items() if k in name), DEFAULT_PROMPT))
        gaps, chances = {}, {}
        for fixed in (False, True):
            alone = row_logits(loaded.model, prompt, 0, fixed, args.slots, args.steps)
            batched = row_logits(loaded.model, prompt, args.batch - 1, fixed, args.slots, args.steps)
            gaps[fixed] = float((alone - batched).abs().max())
            chances[fixed] = flip_chance(alone, batched)
        timings = []
        for active in (1, 4, 16, 32):
            best = {fixed: min(decoder_step_ms(loaded.model, prompt, args.slots, False, None, 100, active, fixed)
                                   for _ in range(3))
                    for fixed in (False, True)}
            timings.append(f"{best[False]:.2f} vs {best[True]:.2f} ({best[True] / best[False]:.1f}x)")
        print(f"| {name} | {gaps[False]:.1e} | {chances[False] * 1000:.3f} | gap {gaps[True]:.0e}, "
              f"flips {chances[True] * 1000:.0f} | {' / '.join(timings)} |", flush=True)


if __name__ == "__main__":
    main()
