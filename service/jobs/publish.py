"""A finished job's model moved into the models directory whole: under a hidden name first (the
models watcher skips hidden directories), then renamed into place in one step."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from training.artifacts import CARD_FILE, RESUME_FILE

JOB_FILE = "job.json"  # in the published model directory: which job made it


def publish(job: dict[str, Any], trained: Path, models_dir: Path, training_file: dict[str, Any] | None) -> Path:
    """Move `trained` (the job's own model directory) to models_dir/<model_name>; its path."""
    name = job["plan"]["model_name"]
    target = models_dir / name
    if published_by(target) == job["id"]:
        return target  # published before a restart interrupted the job's last bookkeeping
    if target.exists():
        raise FileExistsError(f"{target} exists already and was not made by job {job['id']}")
    (trained / RESUME_FILE).unlink(missing_ok=True)
    record = {"job": job["id"], "model": job["model"], "training_file": training_file,
              "settings": job["plan"]["settings"], "hyperparameters": job["plan"]["hyperparameters"]}
    (trained / JOB_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _add_to_card(trained / CARD_FILE, record)
    staging = models_dir / f".{name}.publishing"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.replace(trained, staging)
    except OSError:  # another filesystem (a separate volume): copy, then remove the job's copy
        shutil.copytree(trained, staging)
        shutil.rmtree(trained)
    os.replace(staging, target)
    return target


def published_by(model_dir: Path) -> str | None:
    """The job that made a model directory, if a job did."""
    try:
        return str(json.loads((model_dir / JOB_FILE).read_text(encoding="utf-8"))["job"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _add_to_card(card: Path, record: dict[str, Any]) -> None:
    data = record["training_file"] or {}
    lines = [
        "", "## Training job", "",
        f"- job: `{record['job']}`, from `{record['model']}`",
        f"- data: `{data.get('filename')}` ({data.get('bytes', 0):,} bytes, {data.get('characters', 0):,} characters)",
        f"- settings: `{json.dumps(record['settings'], ensure_ascii=False)}`",
        "",
    ]
    existing = card.read_text(encoding="utf-8") if card.exists() else ""
    card.write_text(existing.rstrip("\n") + "\n" + "\n".join(lines), encoding="utf-8")
