"""Training throughput of each preset: characters per second through the real train step.

    python bench/train_throughput.py [--presets gpt-tiny gpt-small ...] [--iters 20] [--device cpu]

Uses ../shared/data/tinyshakespeare.txt when present, else a generated text of the
same alphabet size. Prints a Markdown table (docs/benchmarks.md holds the results).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from training import distributed
from training.config import PRESETS
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


def measure(preset: str, data: Path, workdir: Path, iters: int, warmup: int, device: str, compile_: bool):
    spec = RunSpec(data=data, out=workdir / preset, preset=preset, progress=False, device=device,
                   overrides={"compile": compile_})
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
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
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
    with tempfile.TemporaryDirectory() as tmp:
        data = corpus(args.data, Path(tmp))
        for preset in args.presets:
            params, chars, seconds = measure(preset, data, Path(tmp), args.iters, args.warmup, args.device,
                                             args.compile)
            print(f"| {preset} | {params:,} | {chars:,} | {seconds * 1000:,.0f} | {chars / seconds:,.0f} |",
                  flush=True)
            if args.results:
                row = {"bench": "train", "preset": preset, "device": args.device, "compile": args.compile,
                       "ms_per_iter": seconds * 1000, "chars_per_s": chars / seconds}
                with args.results.open("a") as out:
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
