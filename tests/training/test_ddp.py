"""Two CPU processes under torchrun train one model together (DDP over gloo)."""

import json
import os
import subprocess
import sys

from charlm.checkpoint import load_model


def test_two_process_data_parallel_training(corpus_file, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "charlm", "train", "--data", str(corpus_file), "--out", str(out), "--preset", "gpt-tiny",
        "--device", "cpu", "--no-progress",
        "--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=2", "--set", "block_size=16",
        "--set", "max_iters=20", "--set", "eval_interval=10", "--set", "eval_iters=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "config.json").read_text())["training"]
    assert summary["world_size"] == 2 and summary["hardware"].startswith("2 x ")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [0, 10, 20]
    assert result.stderr.count("iter 20: train loss") == 1  # only rank 0 records evaluations
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    load_model(out)
