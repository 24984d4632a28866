"""What a run tells whoever follows it (`--events`), how it stops on SIGTERM keeping its latest
state, resumes from that state, starts from another model (`--init-from`), and keeps to a time
budget (`max_minutes`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from charlm.checkpoint import load_model
from tests.helpers import TINY, TINY_RUN, wait_until
from training.artifacts import RESUME_FILE
from training.config import ConfigError
from training.data import DataError
from training.session import RunSpec
from training.trainer import train

PRESET, SMALL = TINY["gpt"]


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def spec(data: Path, out: Path, **fields: Any) -> RunSpec:
    overrides = {**SMALL, **TINY_RUN, **fields.pop("overrides", {})}
    preset = None if fields.get("init_from") or fields.get("resume") else PRESET
    if fields.get("init_from") or fields.get("resume"):
        overrides = {k: v for k, v in overrides.items() if k not in SMALL}
    return RunSpec(data=data, out=out, preset=preset, overrides=overrides, progress=False, device="cpu",
                   command="pytest", **fields)


def test_events_follow_the_run_from_start_to_end(corpus_file: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    train(spec(corpus_file, tmp_path / "m", events=events))
    log = read_events(events)
    assert log[0]["type"] == "start" and log[0]["step"] == 0 and log[0]["total_steps"] == TINY_RUN["max_iters"]
    assert log[-1] == {**log[-1], "type": "end", "step": TINY_RUN["max_iters"], "reason": "finished"}
    evals = [e for e in log if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 30, 60]
    assert all(e["valid_loss"] > 0 and e["sample"] for e in evals)
    progress = [e for e in log if e["type"] == "progress"]
    assert [e["step"] for e in progress] == list(range(10, 61, 10))
    assert all(e["chars_per_s"] > 0 and e["lr"] > 0 for e in progress)
    best = [e["step"] for e in log if e["type"] == "checkpoint" and e["kind"] == "best"]
    assert best == [e["step"] for e in evals if e["best"]]
    assert not (tmp_path / "m" / RESUME_FILE).exists()


def test_sigterm_keeps_the_latest_state_and_resume_runs_no_step_twice(corpus_file: Path, tmp_path: Path) -> None:
    out, events = tmp_path / "m", tmp_path / "events.jsonl"
    settings = {**SMALL, **TINY_RUN, "max_iters": 100000, "eval_interval": 10000, "sample_chars": 0}
    command = [sys.executable, "-m", "charlm", "train", "--data", str(corpus_file), "--out", str(out),
               "--preset", PRESET, "--events", str(events), "--no-progress", "--device", "cpu"]
    command += [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert wait_until(lambda: events.exists() and '"progress"' in events.read_text(), timeout=120)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    stopped = read_events(events)[-1]
    assert stopped["type"] == "end" and stopped["reason"] == "stopped" and stopped["step"] > 0
    assert (out / RESUME_FILE).exists()

    train(spec(corpus_file, out, resume=True, events=events, overrides={"max_iters": stopped["step"] + 20}))
    log = read_events(events)
    start = [e for e in log if e["type"] == "start"][-1]
    assert start["step"] == stopped["step"]  # where it stopped, not the best checkpoint (iteration 0)
    assert log[-1]["reason"] == "finished" and log[-1]["step"] == stopped["step"] + 20
    metrics = [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == len(set(metrics))
    assert not (out / RESUME_FILE).exists()
    assert load_model(out).info["training"]["iterations_run"] == stopped["step"] + 20


def test_init_from_starts_a_new_run_from_a_trained_model(corpus_file: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(spec(corpus_file, base))
    tuned = tmp_path / "tuned"
    train(spec(corpus_file, tuned, init_from=base, overrides={"max_iters": 10, "eval_interval": 5}))
    loaded = load_model(tuned)
    assert loaded.vocab.chars == load_model(base).vocab.chars
    assert loaded.info["training"]["iterations_run"] == 10
    assert loaded.info["training"]["model_config"] == load_model(base).info["training"]["model_config"]

    strange = tmp_path / "strange.txt"
    strange.write_text(corpus_file.read_text() + "§¶", encoding="utf-8")
    with pytest.raises(DataError, match="vocabulary lacks"):
        train(spec(strange, tmp_path / "other", init_from=base))
    with pytest.raises(ConfigError, match="cannot change model settings"):
        train(RunSpec(data=corpus_file, out=tmp_path / "other", init_from=base, overrides={"n_embd": 64}))


def test_max_minutes_ends_the_run_with_an_evaluation(corpus_file: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    summary = train(spec(corpus_file, tmp_path / "m", events=events,
                         overrides={"max_iters": 10**9, "max_minutes": 0.002}))
    assert summary is not None
    log = read_events(events)
    assert log[-1]["reason"] == "time_limit"
    assert log[-2]["type"] in ("eval", "checkpoint") and 0 < log[-1]["step"] < 10**9
    with pytest.raises(ConfigError, match="max_minutes"):
        train(spec(corpus_file, tmp_path / "n", overrides={"max_minutes": -1}))
