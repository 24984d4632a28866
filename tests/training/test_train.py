"""Short real training runs on the fixture corpus."""

import json
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from charlm.checkpoint import load_model
from tests.helpers import TINY, TINY_RUN, train_tiny, wait_until
from training import artifacts, distributed
from training.config import ConfigError
from training.session import RunSpec, prepare
from training.trainer import Trainer, train

EXPECTED_FILES = {
    "model.safetensors", "vocab.json", "config.json", "README.md", "metrics.jsonl", "loss.png",
    "training_state.pt",
}


def read_metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_a_complete_model_directory(trained_dir):
    assert {p.name for p in trained_dir.iterdir()} == EXPECTED_FILES
    metrics = read_metrics(trained_dir)
    assert [m["iter"] for m in metrics] == [0, 30, 60]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5
    assert metrics[-1]["val_bpc"] == pytest.approx(metrics[-1]["val_loss"] / 0.693147, rel=1e-4)
    assert (trained_dir / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert not list(trained_dir.parent.glob(".*"))  # no staging directory left behind


def test_without_matplotlib_training_writes_everything_but_the_loss_curve(corpus_file, tmp_path, monkeypatch, caplog):
    # matplotlib is the train extra, which `make serve` and the serving image leave out; `charlm train` still works.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    artifacts.plotting_available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="training.artifacts"):
            out = train_tiny("lstm", corpus_file, tmp_path / "m", max_iters=30, eval_interval=15)
    finally:
        artifacts.plotting_available.cache_clear()
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES - {"loss.png"}
    assert [m["iter"] for m in read_metrics(out)] == [0, 15, 30]
    assert "no loss.png (the train extra has it: pip install 'charlm[train]')" in caplog.text


def test_model_card_and_summary_describe_the_run(trained_dir):
    info = json.loads((trained_dir / "config.json").read_text())
    summary = info["training"]
    assert summary["data"] == "corpus.txt" and len(summary["data_sha256"]) == 64
    assert summary["iterations"] <= summary["iterations_run"] == 60
    card = (trained_dir / "README.md").read_text()
    for needle in (summary["data_sha256"], "pytest", "validation loss", "Seed 3:", "wall time", "hardware"):
        assert needle in card


def test_the_best_checkpoint_is_the_one_kept(trained_dir):
    metrics = read_metrics(trained_dir)
    best = min(metrics, key=lambda m: m["val_loss"])
    summary = json.loads((trained_dir / "config.json").read_text())["training"]
    assert summary["iterations"] == best["iter"] and summary["val_loss"] == best["val_loss"]


def test_resume_continues_from_the_saved_state(corpus_file, tmp_path):
    out = train_tiny("lstm", corpus_file, tmp_path / "m", max_iters=30, eval_interval=15)
    spec = RunSpec(data=corpus_file, out=out, overrides={"max_iters": 45}, resume=True, progress=False)
    summary = train(spec)
    assert summary is not None and summary["iterations_run"] == 45
    assert [m["iter"] for m in read_metrics(out)] == [0, 15, 30, 45]
    state = torch.load(out / "training_state.pt", weights_only=True)
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {summary["iterations"]}  # the optimizer went on counting from the saved state
    assert "resumed with" in summary["command"]


def test_resume_refuses_model_changes_and_finished_runs(trained_dir, corpus_file):
    with pytest.raises(ConfigError, match="cannot change model settings"):
        train(RunSpec(data=corpus_file, out=trained_dir, overrides={"hidden_size": 8}, resume=True))
    with pytest.raises(ConfigError, match="already reached max_iters"):
        train(RunSpec(data=corpus_file, out=trained_dir, resume=True))


def test_an_existing_directory_is_neither_overwritten_nor_resumed_silently(trained_dir, corpus_file):
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        train(RunSpec(data=corpus_file, out=trained_dir, preset="gpt-tiny"))


def test_overwrite_replaces_a_model_directory(corpus_file, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    train_tiny("gpt", corpus_file, out, overwrite=True, max_iters=4, eval_interval=2)
    assert not (out / "stale.txt").exists()
    assert load_model(out).model.architecture == "gpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the old directory is gone


def test_overwrite_keeps_the_old_directory_until_the_new_first_checkpoint(corpus_file, tmp_path, monkeypatch):
    """Until the new run's first checkpoint is complete, --out is the old model, whole; a crash
    while that checkpoint is written leaves it so for good."""
    out = train_tiny("lstm", corpus_file, tmp_path / "m", max_iters=4, eval_interval=2)
    old_weights = (out / "model.safetensors").read_bytes()
    seen_at_checkpoint = []
    write_checkpoint = artifacts.RunDirectory.write_checkpoint

    def looking(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen_at_checkpoint.append((out / "model.safetensors").read_bytes() == old_weights)
        return write_checkpoint(self, *args, **kwargs)

    monkeypatch.setattr(artifacts.RunDirectory, "write_checkpoint", looking)
    monkeypatch.setattr(artifacts.torch, "save", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        train_tiny("gpt", corpus_file, out, overwrite=True, max_iters=4, eval_interval=2)
    assert seen_at_checkpoint == [True]
    assert (out / "model.safetensors").read_bytes() == old_weights and load_model(out).model.architecture == "lstm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging directory left behind
    monkeypatch.undo()
    train_tiny("gpt", corpus_file, out, overwrite=True, max_iters=4, eval_interval=2)
    assert load_model(out).model.architecture == "gpt"


def test_progress_is_plain_lines_when_the_output_is_not_a_terminal(corpus_file, tmp_path, capsys, caplog):
    """A progress bar's carriage-return frames would garble a log; under pytest stderr is no terminal."""
    spec = RunSpec(data=corpus_file, out=tmp_path / "m", preset="lstm", device="cpu", progress=True,
                   overrides={**TINY["lstm"][1], **TINY_RUN, "max_iters": 400, "eval_interval": 400})
    with caplog.at_level(logging.INFO, logger="training"):
        train(spec)
    assert "\r" not in capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.name == "training.progress"]
    assert 10 <= len(lines) <= 21, lines  # about twenty in a run, however long
    assert all(re.fullmatch(r"iter \d+/400: loss \d+\.\d{4}, [\d,]+ characters/s", line) for line in lines), lines


def test_streams_batching_needs_a_recurrent_model(corpus_file, tmp_path):
    with pytest.raises(ConfigError, match="needs a recurrent model"):
        train_tiny("gpt", corpus_file, tmp_path / "m", batching="streams")


def test_a_crash_while_writing_the_first_checkpoint_leaves_nothing(corpus_file, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.torch, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        train_tiny("gpt", corpus_file, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # neither the model directory nor its staging copy


def test_a_crash_during_a_later_checkpoint_keeps_the_previous_one(corpus_file, tmp_path, monkeypatch):
    out = train_tiny("gpt", corpus_file, tmp_path / "m", max_iters=10, eval_interval=10)
    before = load_model(out)
    calls = []

    def fail_on_weights(tensors, filename, metadata=None):
        calls.append(filename)
        raise OSError("disk full")

    monkeypatch.setattr("charlm.checkpoint.save_file", fail_on_weights)
    spec = RunSpec(data=corpus_file, out=out, overrides={"max_iters": 20}, resume=True, progress=False)
    with pytest.raises(OSError, match="disk full"):
        train(spec)
    assert calls, "the resumed run should have tried to checkpoint"
    after = load_model(out)
    for name, tensor in before.model.state_dict().items():
        assert torch.equal(tensor, after.model.state_dict()[name])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_ctrl_c_keeps_the_best_checkpoint(corpus_file, tmp_path):
    """A `charlm train` process (timing: it waits for the process to have evaluated twice) gets
    SIGINT: it stops after the iteration in progress, exit status 130, the checkpoint intact."""
    out = tmp_path / "m"
    command = [
        sys.executable, "-m", "charlm", "train", "--data", str(corpus_file), "--out", str(out),
        "--preset", "gpt-tiny", "--set", "max_iters=100000", "--set", "eval_interval=20",
        "--set", "eval_iters=2", "--set", "sample_chars=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"  # written with each checkpoint, after the first evaluation
    assert wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, timeout=120), \
        "the run did not evaluate twice within 120 s"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "keeps the best checkpoint" in stderr and "stopping after this iteration" in stderr
    assert "Traceback" not in stderr
    assert "\r" not in stderr and "characters/s" in stderr  # progress as plain lines into a pipe
    assert load_model(out).model is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]



def test_resume_refuses_a_state_from_another_checkpoint(corpus_file, tmp_path):
    out = train_tiny("gpt", corpus_file, tmp_path / "m", max_iters=10, eval_interval=10)
    state = torch.load(out / "training_state.pt", weights_only=True)
    torch.save({**state, "iter": 5}, out / "training_state.pt")
    with pytest.raises(ConfigError, match="are from different checkpoints"):
        train(RunSpec(data=corpus_file, out=out, overrides={"max_iters": 20}, resume=True))


def test_resume_refuses_a_damaged_state_file(corpus_file, tmp_path):
    out = train_tiny("gpt", corpus_file, tmp_path / "m", max_iters=10, eval_interval=10)
    (out / "training_state.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="training_state.pt is unreadable"):
        train(RunSpec(data=corpus_file, out=out, overrides={"max_iters": 20}, resume=True))


def test_early_stopping_after_patience_evaluations_without_improvement(corpus_file, tmp_path):
    # A learning rate this small leaves the validation loss where it is.
    out = train_tiny("gpt", corpus_file, tmp_path / "m", lr=1e-12, min_lr=0.0, patience=2,
                     max_iters=1000, eval_interval=5)
    assert [m["iter"] for m in read_metrics(out)] == [0, 5, 10]
    assert json.loads((out / "config.json").read_text())["training"]["iterations_run"] == 10


@pytest.mark.parametrize("preset, model", [("lstm", {"hidden_size": 8}),
                                           ("mingru", {"hidden_size": 8, "n_embd": 8, "n_layer": 1})])
def test_streams_carry_the_recurrent_state_between_batches(corpus_file, tmp_path, preset, model):
    spec = RunSpec(data=corpus_file, out=tmp_path / "m", preset=preset, device="cpu", progress=False,
                   overrides={**model, "seq_len": 16, "batch_size": 4, "batching": "streams"})
    session = prepare(spec, distributed.setup("cpu"))
    seen = []
    forward_carry = session.model.forward_carry

    def spy(idx, targets, state):
        seen.append(state)
        return forward_carry(idx, targets, state)

    session.model.forward_carry = spy
    trainer = Trainer(session, distributed.setup("cpu"))
    state = None
    for iteration in range(3):
        _, state = trainer.train_step(iteration, state)
    assert seen[0] is None  # the first chunk of a pass starts fresh
    assert seen[1] is not None and seen[2] is not None
    assert not seen[1].h.requires_grad  # carried detached: truncated backpropagation
