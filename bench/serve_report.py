"""What bench/serve.py prints and draws from its measured levels: one table row (and one JSON line)
per measurement as it ends, a summary over repeats, and the plot.

    Level (bench/serve_load.py) → row, result → stdout and --results
    all Levels → summary (median and range per streams and API; each API against the first, per round) → stdout
    all Levels → plot (per API, the median run of each streams level) → PNG
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from serve_load import Level  # bench/, beside this script

HEADER = ("| streams | API | characters / s | in-process engine (HTTP share) | first char p50 / p95 / p99 (ms) "
          "| between chars p50 / p99 (ms) | front ends: cores / µs per char | engines: cores / µs per char "
          "| client cores | errors |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def row(level: Level) -> str:
    """One measurement as a row of HEADER's table."""
    def cores(cpu_s: float | None) -> str:
        return "—" if cpu_s is None else f"{cpu_s / level.seconds:.2f}"

    def per_char(cpu_s: float | None) -> str:
        return "—" if cpu_s is None or not level.chars else f"{cpu_s / level.chars * 1e6:.1f}"

    engine = level.engine_rate
    baseline = "—" if engine is None else f"{engine:,.0f} ({level.rate / engine:.2f})"
    first = " / ".join(f"{level.percentile(level.first, q):.1f}" for q in (50, 95, 99))
    front, engines = level.front_end_cpu_s, level.engine_cpu_s
    return (f"| {level.concurrency} | {level.api} | {level.rate:,.0f} | {baseline} | {first} "
            f"| {level.percentile(level.gaps, 50):.2f} / {level.percentile(level.gaps, 99):.2f} "
            f"| {cores(front)} / {per_char(front)} | {cores(engines)} / {per_char(engines)} "
            f"| {level.client_cpu_s / level.seconds:.2f} | {level.errors} |")


def result(level: Level, args: argparse.Namespace) -> dict[str, object]:
    """One measurement as a line of --results."""
    def per_char(cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not level.chars else cpu_s / level.chars * 1e6

    return {"bench": "serve", "api": level.api, "model": args.model, "device": args.device, "workers": args.workers,
            "streams": level.concurrency, "chars_per_s": level.rate, "engine_chars_per_s": level.engine_rate,
            "first_p50_ms": level.percentile(level.first, 50), "first_p95_ms": level.percentile(level.first, 95),
            "gap_p50_ms": level.percentile(level.gaps, 50), "front_end_us_per_char": per_char(level.front_end_cpu_s),
            "engine_us_per_char": per_char(level.engine_cpu_s), "client_cores": level.client_cpu_s / level.seconds,
            "errors": level.errors}


def report(level: Level, args: argparse.Namespace) -> None:
    print(row(level), flush=True)
    if args.results:
        with args.results.open("a") as out:
            out.write(json.dumps(result(level, args)) + "\n")


def runs(levels: list[Level]) -> dict[tuple[int, str], list[Level]]:
    """The measurements of each (streams, API), in the order they were made (repeat i is the i-th)."""
    grouped: dict[tuple[int, str], list[Level]] = {}
    for level in levels:
        grouped.setdefault((level.concurrency, level.api), []).append(level)
    return grouped


def spread(values: list[float], digits: int) -> str:
    """The median, and the lowest to the highest in parentheses when there are several."""
    median = f"{statistics.median(values):,.{digits}f}"
    return median if len(values) == 1 else f"{median} ({min(values):,.{digits}f} to {max(values):,.{digits}f})"


def against(ours: list[Level], theirs: list[Level]) -> list[str]:
    """Repeat by repeat (the same round of the machine's noise): our share of their characters/s and
    our first-character p50 less theirs; each as the median over repeats (and range), then every repeat's."""
    pairs = list(zip(ours, theirs, strict=False))
    shares = [o.rate / t.rate if t.rate else float("nan") for o, t in pairs]
    differences = [o.percentile(o.first, 50) - t.percentile(t.first, 50) for o, t in pairs]
    rounds = ", ".join(f"{share:.2f}; {difference:+.1f}" for share, difference in zip(shares, differences, strict=True))
    return [spread(shares, 2), spread(differences, 1), rounds]


def summary(levels: list[Level]) -> list[str]:
    """Per streams level and API, over repeats: the median and range of characters/s and of first
    character p50 and p95; each API beside the first one named, repeat by repeat (`against`)."""
    grouped = runs(levels)
    apis = list(dict.fromkeys(level.api for level in levels))
    lines = ["| streams | API | characters / s, median (range) | first char p50 (ms) | first char p95 (ms) "
             f"| against {apis[0]}: characters / s share, per round | against {apis[0]}: first char p50 "
             "difference (ms), per round | each round: share; p50 difference |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for (concurrency, api), measured in grouped.items():
        compared = ["—"] * 3 if api == apis[0] else against(measured, grouped[concurrency, apis[0]])
        p50, p95 = ([lv.percentile(lv.first, q) for lv in measured] for q in (50, 95))
        lines.append(f"| {concurrency} | {api} | {spread([lv.rate for lv in measured], 0)} "
                     f"| {spread(p50, 1)} | {spread(p95, 1)} | {' | '.join(compared)} |")
    return lines


def median_run(measured: list[Level]) -> Level:
    return sorted(measured, key=lambda lv: lv.rate)[(len(measured) - 1) // 2]


def plot(levels: list[Level], path: Path) -> None:
    """Throughput and latency against streams, a line per API (of each level's median run)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    grouped = runs(levels)
    apis = list(dict.fromkeys(level.api for level in levels))
    for api in apis:
        shown = [median_run(measured) for (_, of), measured in grouped.items() if of == api]
        name = f"{api}: " if len(apis) > 1 else ""
        xs = [lv.concurrency for lv in shown]
        left.plot(xs, [lv.rate for lv in shown], marker="o", label=api)
        series: tuple[tuple[Callable[[Level], list[float]], str], ...] = (
            (lambda lv: lv.first, "first character"), (lambda lv: lv.gaps, "between characters"))
        for values, label in series:
            for q, style in ((50, "-"), (99, "--")):
                right.plot(xs, [lv.percentile(values(lv), q) for lv in shown], style, marker=".",
                           label=f"{name}{label} p{q}")
    left.set(xlabel="concurrent streams", ylabel="characters / s (aggregate)", xscale="log", title="throughput")
    right.set(xlabel="concurrent streams", ylabel="ms", xscale="log", yscale="log", title="latency")
    right.legend(fontsize=8)
    if len(apis) > 1:
        left.legend(fontsize=8)
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
