"""Training throughput of each preset: characters per second through the real train step.

    python bench/train_throughput.py [--presets gpt-tiny gpt-small:block_size=128,batch_size=32 ...]
                                     [--iters 20] [--rounds N] [--device cpu]

A preset may carry `--set`-style overrides after a colon, comma-separated. With --rounds N each
preset is measured N times, the presets taking turns, and a second table gives the ranges (for a
shared machine). Uses ../shared/data/tinyshakespeare.txt when present, else a generated text of
the same alphabet size. Prints Markdown tables (docs/benchmarks.md holds the results).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from training import distributed
from training.config import PRESETS, parse_assignment
from training.session import RunSpec, prepare
from training.trainer import Trainer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def corpus(path: Path, workdir: Path) -> Path:
    if path.is_file():
        return path
    generated = workdir / "generated.txt"
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'\n-&$3"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(alphabet), (1_200_000,), generator=g).tolist()
    generated.write_text("".join(alphabet[i] for i in ids), encoding="utf-8")
    return generated


def parse_preset(text: str) -> tuple[str, dict[str, object]]:
    """'gpt-small:block_size=128,batch_size=32' -> ('gpt-small', {'block_size': 128, 'batch_size': 32})."""
    name, _, settings = text.partition(":")
    return name, dict(parse_assignment(item) for item in settings.split(",") if item)


def measure(preset: str, data: Path, workdir: Path, iters: int, warmup: int, device: str, compile_: bool):
    name, overrides = parse_preset(preset)
    spec = RunSpec(data=data, out=workdir / "run", preset=name, progress=False, device=device,
                   overrides={**overrides, "compile": compile_}, overwrite=True)
    run = distributed.setup(device)
    session = prepare(spec, run)
    trainer = Trainer(session, run)
    state = None
    for i in range(warmup):
        _, state = trainer.train_step(i, state)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(warmup, warmup + iters):
        loss, state = trainer.train_step(i, state)
    loss.item()  # wait for the device
    seconds = (time.perf_counter() - start) / iters
    chars = session.config.batch_size * session.seq_len
    return session.model.num_parameters(), chars, seconds


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="PRESET or PRESET:key=value,...")
    parser.add_argument("--rounds", type=int, default=1, help="measure every preset this many times, in turn")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--results", type=Path, help="append one JSON line per preset to this file")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print("| preset | parameters | characters / iteration | ms / iteration | characters / s |")
    print("|---|---:|---:|---:|---:|")
    rates: dict[str, list[float]] = {preset: [] for preset in args.presets}
    with tempfile.TemporaryDirectory() as tmp:
        data = corpus(args.data, Path(tmp))
        for _ in range(args.rounds):
            for preset in args.presets:
                params, chars, seconds = measure(preset, data, Path(tmp), args.iters, args.warmup, args.device,
                                                 args.compile)
                rates[preset].append(chars / seconds)
                print(f"| {preset} | {params:,} | {chars:,} | {seconds * 1000:,.0f} | {chars / seconds:,.0f} |",
                      flush=True)
                if args.results:
                    row = {"bench": "train", "preset": preset, "device": args.device, "compile": args.compile,
                           "ms_per_iter": seconds * 1000, "chars_per_s": chars / seconds}
                    with args.results.open("a") as out:
                        out.write(json.dumps(row) + "\n")
    if args.rounds > 1:
        print("\n| preset | characters / s, lowest to highest | rounds |\n|---|---:|---:|")
        for preset, measured in rates.items():
            print(f"| {preset} | {min(measured):,.0f} to {max(measured):,.0f} | {len(measured)} |")


if __name__ == "__main__":
    main()
