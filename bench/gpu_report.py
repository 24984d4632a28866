"""docs/benchmarks-gpu.md from what bench/gpu_check.sh measured (its --out folder).

    python bench/gpu_report.py --out /tmp/charlm-gpu-check --doc docs/benchmarks-gpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

Row = dict[str, Any]
GPT, LSTM, BABY = "shakespeare-gpt", "shakespeare-lstm", "gpt-baby size (random)"
MINGRU = "shakespeare-mingru"


def read_jsonl(path: Path) -> list[Row]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find(rows: list[Row], **match: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def steps_section(out: Path) -> list[str]:
    lines = ["| step | exit status | seconds |", "|---|---:|---:|"]
    for line in (out / "steps.txt").read_text().splitlines() if (out / "steps.txt").is_file() else []:
        name, status, seconds = line.split("|")
        lines.append(f"| {name} | {status}{' (timed out)' if status == '124' else ''} | {seconds} |")
    return lines


def engine_section(rows: list[Row]) -> list[str]:
    lines = ["| model | dtype | batch | engine characters / s | ms / step | step alone (ms) "
             "| naive loop characters / s | x loop | CUDA graph |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in (r for r in rows if r["bench"] == "engine"):
        loop = r.get("loop_chars_per_s")
        ratio = "—" if not loop else f"{r['chars_per_s'] / loop:.1f}"
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {number(r['chars_per_s'])} "
                     f"| {r['ms_per_step']:.3f} | {r['step_alone_ms']:.3f} | {number(loop)} | {ratio} "
                     f"| {'yes' if r['cuda_graphs'] else 'no'} |")
    return lines


def target_rows(rows: list[Row]) -> list[tuple[str, str, str, bool | None]]:
    """(measure, measured, target, met) for the GPU issue's targets."""
    def rate(model: str, dtype: str, batch: int) -> Row | None:
        return find(rows, bench="engine", model=model, dtype=dtype, batch=batch)

    out: list[tuple[str, str, str, bool | None]] = []
    for label, model, batch, floor, times in ((f"{GPT}, bf16, batch 1", GPT, 1, 3000, 4),
                                               (f"{BABY}, bf16, batch 256", BABY, 256, 500_000, 10),
                                               (f"{LSTM}, bf16, batch 256", LSTM, 256, 300_000, None)):
        r = rate(model, "bfloat16", batch)
        if r is None:
            out.append((label, "not measured", f">= {floor:,}", None))
            continue
        loop = r.get("loop_chars_per_s")
        met = r["chars_per_s"] >= floor and (times is None or (loop is not None and r["chars_per_s"] >= times * loop))
        shown = f"{r['chars_per_s']:,.0f}" + (f" ({r['chars_per_s'] / loop:.1f}x the loop)" if loop else "")
        out.append((label, shown, f">= {floor:,}" + (f" and >= {times}x the loop" if times else ""), met))
    stream = find(rows, bench="serve", streams=1)
    out.append(("one HTTP stream, shakespeare-gpt", number(stream["chars_per_s"]) if stream else "not measured",
                ">= 1,500", None if stream is None else stream["chars_per_s"] >= 1500))
    for model in (GPT, LSTM, BABY):
        for batch in (1, 256):
            bf16, fp32 = rate(model, "bfloat16", batch), rate(model, "float32", batch)
            if bf16 and fp32:
                ratio = bf16["chars_per_s"] / fp32["chars_per_s"]
                out.append((f"bf16 against fp32, {model}, batch {batch}", f"{ratio:.2f}x", "not slower (>= 0.95x)",
                            ratio >= 0.95))
    for batch in (256, 1024):  # the minGRU issue set its target on a CPU (>= 1.5x at batch 32), none here
        mingru, gpt = rate(MINGRU, "bfloat16", batch), rate(GPT, "bfloat16", batch)
        shown = "not measured" if not (mingru and gpt) else (
            f"{mingru['chars_per_s']:,.0f} against {gpt['chars_per_s']:,.0f} "
            f"({mingru['chars_per_s'] / gpt['chars_per_s']:.1f}x)")
        out.append((f"{MINGRU} against {GPT}, bf16, batch {batch:,}", shown, "none set", None))
    many, engine = find(rows, bench="serve", streams=256), rate(GPT, "bfloat16", 256)
    if many and engine:
        share = many["chars_per_s"] / engine["chars_per_s"]
        out.append(("256 HTTP streams against the engine at batch 256 (shakespeare-gpt, bf16)",
                    f"{share:.0%}", ">= 80%", share >= 0.8))
    return out


def serve_section(rows: list[Row]) -> list[str]:
    lines = ["| streams | characters / s | first char p50 (ms) | between chars p50 (ms) | server CPU (cores) "
             "| client CPU (cores) | errors |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["bench"] == "serve"):
        lines.append(f"| {r['streams']} | {number(r['chars_per_s'])} | {r['first_p50_ms']:.1f} | "
                     f"{r['gap_p50_ms']:.2f} | {number(r['server_cores'], 2)} | {number(r.get('client_cores'), 2)} "
                     f"| {r['errors']} |")
    return lines


def training_section(rows: list[Row], out: Path) -> list[str]:
    lines = []
    for r in (r for r in rows if r["bench"] == "train"):
        lines.append(f"- `{r['preset']}` training step{' compiled' if r['compile'] else ', eager'}: "
                     f"{r['ms_per_iter']:.1f} ms per iteration, {r['chars_per_s']:,.0f} characters / s")
    metrics = read_jsonl(out / "shakespeare-gpt-large" / "metrics.jsonl")
    evaluated = [m for m in metrics if m.get("val_loss") is not None]
    if evaluated:
        best = min(evaluated, key=lambda m: m["val_loss"])
        lines.append(f"- `gpt-baby` (bias off, 2,500 iterations, cosine to 2,500) on tinyshakespeare: best validation "
                     f"loss {best['val_loss']:.4f} at iteration {best['iter']:,}; {metrics[-1]['elapsed_s']:.0f} s "
                     f"in all ({'bundled' if best['val_loss'] <= 1.47 else 'not bundled: above 1.47'})")
    lines.extend(mingru_curve(out))
    return lines or ["- not measured"]


def mingru_curve(out: Path) -> list[str]:
    """The mingru recipe's validation losses beside shakespeare-gpt's (its metrics.jsonl), at equal
    iterations of the same schedule: the comparison a loaded CPU could not make."""
    mingru = {m["iter"]: m["val_loss"] for m in read_jsonl(out / "shakespeare-mingru-gpu" / "metrics.jsonl")}
    if not mingru:
        return []
    gpt = {m["iter"]: m["val_loss"] for m in read_jsonl(Path("models") / GPT / "metrics.jsonl")}
    shown = ", ".join(f"{i:,}: {mingru[i]:.4f} / {number(gpt.get(i), 4)}" for i in sorted(mingru) if i)
    return [f"- the `mingru` recipe on shakespeare-gpt's schedule, validation loss mingru / shakespeare-gpt "
            f"by iteration: {shown}"]


def profile_lines(out: Path) -> list[str]:
    """The profile's own report, without the warnings a run may print around it."""
    path = out / "profile.log"
    if not path.is_file():
        return ["not measured"]
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("random:") or ", batch " in line), 0)
    return [line for line in lines[start:] if "Warning" not in line and "_warn_once" not in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks-gpu.md"))
    args = parser.parse_args()
    rows = read_jsonl(args.out / "results.jsonl")
    card = (args.out / "card.txt").read_text().strip() if (args.out / "card.txt").is_file() else "unknown card"
    targets = ["| measure | measured | target | met |", "|---|---:|---|---|"]
    for label, shown, goal, met in target_rows(rows):
        targets.append(f"| {label} | {shown} | {goal} | {'—' if met is None else ('yes' if met else 'NO')} |")
    doc = [
        "# Benchmarks on a GPU", "",
        f"Measured by `bench/gpu_check.sh` on {datetime.date.today()}: {card}. Each table names the step that",
        "produced it; the whole log of a run is what the script prints.", "",
        "## Targets", "", *targets, "",
        "## Decoding in-process: `bench/engine.py`", "", *engine_section(rows), "",
        "Decoding eagerly (`--no-graphs`), for comparison:", "",
        *engine_section(read_jsonl(args.out / "eager.jsonl")), "",
        "## Serving over HTTP: `bench/serve.py` (shakespeare-gpt, 300 characters per stream)", "",
        *serve_section(rows), "",
        "The same with the engines in the server's own process (`--engine-process false`):", "",
        *serve_section(read_jsonl(args.out / "serve-thread.jsonl")), "",
        "## Where a decode step's time goes: `bench/gpu_profile.py`", "",
        "```", *profile_lines(args.out), "```", "",
        "## Training", "", *training_section(rows, args.out), "",
        "## Steps of the run", "", *steps_section(args.out), "",
    ]
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text("\n".join(doc))
    print("\n".join(targets))


if __name__ == "__main__":
    main()
