"""A job's run on disk: its directory under CHARLM_DATA_DIR/jobs, the `charlm train` command that
starts or resumes it, what its log says when it fails, and its model once published."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from charlm.cpus import available_cpus
from service.jobs.executors import TrainCommand
from service.jobs.files import JOBS_DIR, file_path
from service.jobs.publish import publish, publishing
from service.jobs.store import Store
from training.plan import STATE_FILE

LOG_TAIL_BYTES = 4096


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / JOBS_DIR / job_id


def events_path(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / "events.jsonl"


def log_path(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / "train.log"


def model_path(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / "model"


def train_command(job: dict[str, Any], store: Store, data_dir: Path, settings: Any) -> TrainCommand:
    """`charlm train` for the job: resuming its checkpoint when it has one, else from its preset or base."""
    plan, request = job["plan"], job["request"]
    out = model_path(data_dir, job["id"])
    for stale in out.parent.glob(f".{out.name}.*"):  # a first checkpoint interrupted halfway
        shutil.rmtree(stale, ignore_errors=True)
    device = settings.train_device or settings.device
    args = ["train", "--data", str(file_path(data_dir, request["training_file"])), "--out", str(out),
            "--events", str(events_path(data_dir, job["id"])), "--no-progress", "--device", device]
    if request.get("validation_file"):
        args += ["--valid-data", str(file_path(data_dir, request["validation_file"]))]
    if (out / STATE_FILE).is_file():
        args.append("--resume")  # its settings are in the checkpoint
    else:
        if out.exists():  # a directory without a checkpoint to resume: replaced at the first one
            args.append("--overwrite")
        args += ["--preset", plan["preset"]] if plan["preset"] else ["--init-from", plan["base_path"]]
        for key, value in plan["settings"].items():
            args += ["--set", f"{key}={json.dumps(value)}"]
    threads = str(settings.train_threads or default_train_threads())
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    return TrainCommand(job["id"], args, env, log_path(data_dir, job["id"]))


def default_train_threads() -> int:
    """Half the CPUs this process may use less one, at least one: the rest serve (CHARLM_TORCH_THREADS)
    and answer HTTP."""
    return max(1, (available_cpus() - 1) // 2)


def failure_message(data_dir: Path, job_id: str, status: int) -> str:
    """The run's own last word (`charlm train: ...`), else its exit status."""
    tail = read_tail(log_path(data_dir, job_id)).decode("utf-8", "replace").splitlines()
    said = [line.split("charlm train: ", 1)[1] for line in tail if "charlm train: " in line]
    if said:
        return said[-1]
    return f"the training process exited with status {status}" + (f"; its log ends: {tail[-1][:300]}" if tail else "")


def done_training(job: dict[str, Any], data_dir: Path, models_dir: Path) -> bool:
    """Whether the job's training is over and only its publishing is left: its model published (or
    halfway), or its last run ended by itself (the end of its events says so) before a restart."""
    if publishing(job, models_dir):
        return True
    try:
        event = json.loads(read_tail(events_path(data_dir, job["id"])).splitlines()[-1])
    except (IndexError, ValueError):
        return False
    return isinstance(event, dict) and event.get("type") == "end" and event.get("reason") != "stopped"


def read_tail(path: Path) -> bytes:
    """The last LOG_TAIL_BYTES of a file; nothing when it is not there."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return f.read()
    except OSError:
        return b""


def publish_model(job: dict[str, Any], store: Store, settings: Any) -> Path:
    trained = model_path(settings.data_dir, job["id"])
    if not publishing(job, settings.models_dir) and not trained.is_dir():
        raise ValueError("the run ended without writing a model (its validation loss was never finite)")
    record = store.file(job["request"]["training_file"])
    shown = {k: record[k] for k in ("id", "filename", "bytes", "characters")} if record else None
    return publish(job, trained, settings.models_dir, shown)


def discard_model(data_dir: Path, job_id: str) -> None:
    """A cancelled or failed job's checkpoints: nothing will use them (its events and log stay)."""
    shutil.rmtree(model_path(data_dir, job_id), ignore_errors=True)

