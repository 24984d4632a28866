"""A server killed with SIGKILL in the middle of a job: its training run dies with it, and the next
server on the same data directory resumes the job from its last checkpoint, runs no step before that
checkpoint again, and ends with exactly one model."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from pathlib import Path

from charlm.checkpoint import load_model
from tests.helpers import make_corpus, wait_until
from tests.service.helpers import serve_process
from tests.service.training import ADMIN_KEY, TINY_JOB, create_job, events, upload, wait_for

STEPS = 300
KEPT = ("New best checkpoint", "State saved")  # the events of a checkpoint a job resumes from


def run_ref(data: Path, job_id: str) -> int:
    with sqlite3.connect(data / "charlm.sqlite3") as db:
        return int(db.execute("SELECT run_ref FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])


def test_a_job_survives_kill_9_of_its_server(tiny_models: Path, tmp_path: Path) -> None:
    models, data = tmp_path / "models", tmp_path / "data"
    shutil.copytree(tiny_models / "tiny-gpt", models / "tiny-gpt")
    args = ("--models-dir", str(models), "--default-model", "tiny-gpt", "--models-poll-s", "0")
    environment = {"CHARLM_TRAINING": "1", "CHARLM_ADMIN_KEY": ADMIN_KEY, "CHARLM_DATA_DIR": str(data)}
    with serve_process(*args, environment=environment) as server:
        server.wait_healthy()
        text = upload(server.url, make_corpus()).json()["id"]
        job_id = create_job(server.url, text, hyperparameters={**TINY_JOB, "max_iters": STEPS,
                                                               "eval_interval": 50}).json()["id"]
        assert wait_until(lambda: any(e["message"].startswith(KEPT) and e["data"]["step"] >= 50
                                      for e in events(server.url, job_id)), timeout=120)
        trainer = run_ref(data, job_id)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        assert wait_until(lambda: not Path(f"/proc/{trainer}").exists() or _zombie(trainer), timeout=20), \
            "the training run outlived its server"
    with serve_process(*args, environment=environment) as server:
        server.wait_healthy()
        done = wait_for(server.url, job_id, ("succeeded", "failed", "cancelled"), timeout=300)
        assert done["status"] == "succeeded", (done, server.output())
        log = events(server.url, job_id)
    said = [e["message"] for e in log]
    assert "The server restarted: the job resumes from its last checkpoint" in said
    restart = said.index("The server restarted: the job resumes from its last checkpoint")
    last_kept = max(e["data"]["step"] for e in log[:restart] if e["message"].startswith(KEPT))
    resumed = next(e for e in log[restart:] if e["message"].startswith("Training resumed at step"))
    assert resumed["data"]["step"] == last_kept >= 50
    steps_after = [e["data"]["step"] for e in log[restart:] if e["type"] == "metrics"]
    assert min(steps_after) > last_kept  # no step up to the checkpoint ran again
    published = [p.name for p in models.iterdir() if p.name != "tiny-gpt"]
    assert published == [done["fine_tuned_model"]]
    model = load_model(models / published[0])
    assert model.info["training"]["iterations_run"] == STEPS
    iters = [json.loads(line)["iter"] for line in (models / published[0] / "metrics.jsonl").read_text().splitlines()]
    assert iters == sorted(set(iters))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
