"""bench/gpu_report.py turns what bench/gpu_check.sh measured into the GPU issue's target table:
checked here on rows shaped as a GPU run writes them, so that the one GPU run does not die on a typo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
BABY, GPT, LSTM = "gpt-baby size (random)", "shakespeare-gpt", "shakespeare-lstm"


def engine_row(model: str, dtype: str, batch: int, rate: float, **more: object) -> dict[str, object]:
    return {"bench": "engine", "model": model, "device": "cuda", "dtype": dtype, "batch": batch, "chars_per_s": rate,
            "ms_per_step": 1000 * batch / rate, "step_alone_ms": None, "loop_chars_per_s": None, "cuda_graphs": True,
            "compiled": True, "compile_s": 21.5, "decode_attention": "triton", **more}


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_report_fills_every_target_from_a_gpu_runs_results(tmp_path):
    write(tmp_path / "results.jsonl", [
        engine_row(BABY, "bfloat16", 256, 612_000.0), engine_row(BABY, "bfloat16", 1024, 900_000.0),
        engine_row(GPT, "bfloat16", 256, 650_000.0), engine_row(GPT, "bfloat16", 1, 4_000.0),
        engine_row(LSTM, "auto", 256, 580_000.0, chosen_dtype="float32", dtype_reason="timed"),
    ])
    write(tmp_path / "baseline.jsonl", [
        engine_row(BABY, "bfloat16", 256, 207_000.0, compiled=False, decode_attention="sdpa"),
        engine_row(LSTM, "float32", 256, 570_000.0, compiled=False), engine_row(LSTM, "bfloat16", 256, 300_000.0),
    ])
    write(tmp_path / "profile.jsonl", [
        {"bench": "profile", "model": BABY, "mode": mode, "batch": 256, "dtype": "bfloat16", "device": "cuda",
         "kernels_per_step": kernels, "kernel_us_per_step": micros, "replay_ms": 0.4, "compiled": compiled,
         "compile_s": 20.0, "decode_attention": attention}
        for mode, kernels, micros, compiled, attention in (
            ("as served (compiled, attention auto)", 38, 310.0, True, "triton"),
            ("before: step as written, SDPA", 178, 815.0, False, "sdpa"))])
    write(tmp_path / "cpu.jsonl", [{**engine_row(GPT, "float32", 1, 480.0), "device": "cpu"}])
    (tmp_path / "gpu-tests.xml").write_text(
        '<testsuites><testsuite><testcase name="test_a_seeded_row_alone_equals_the_same_row_in_a_full_batch_of_255_'
        'others[gpt]"/></testsuite></testsuites>')
    doc = tmp_path / "benchmarks-gpu.md"
    done = subprocess.run([sys.executable, "bench/gpu_report.py", "--out", str(tmp_path), "--doc", str(doc)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line for line in doc.read_text().splitlines() if line.startswith("| ")}
    assert "612,000, 0.418 ms/step | 207,000 | >= 500,000 | yes" in rows[f"{BABY}, bf16, batch 256"]
    assert rows[f"{BABY}, bf16, batch 1,024"].endswith("| — | >= 1,000,000 | NO |")
    assert rows[f"{GPT}, bf16, batch 1"].endswith("| >= 5,000 | NO |")
    kernels = rows["kernels per step, gpt-baby size, batch 256"]
    assert "| 38 (310 us of kernel time) | 178 (815 us) | <= 40 | yes |" in kernels
    lstm = rows[f"{LSTM}, batch 256, dtype auto (target: this run's float32)"]
    assert "(float32)" in lstm and "| 300,000 | >= 570,000 | yes |" in lstm
    assert rows["seeded output alone vs among 255 others (compiled, graphed)"].endswith("| identical | yes |")
    assert "480" in rows[f"CPU engine, {GPT}, batch 1"]
