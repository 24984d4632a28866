"""A finished job's model moved into the models directory whole: under a hidden name first (the
models watcher skips hidden directories), then renamed into place in one step."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from training.plan import CARD_FILE, RESUME_FILE

JOB_FILE = "job.json"  # in the published model directory: which job made it


def publish(job: dict[str, Any], trained: Path, models_dir: Path, training_file: dict[str, Any] | None) -> Path:
    """Move `trained` (the job's own model directory) to models_dir/<model_name>; its path. Safe to call
    again after a crash at any point: each step can be told from the files it left."""
    name = job["plan"]["model_name"]
    target, staging = models_dir / name, models_dir / f".{name}.publishing"
    if published_by(target) == job["id"]:
        return target  # published before a restart interrupted the job's last bookkeeping
    if target.exists():
        raise FileExistsError(f"{target} exists already and was not made by job {job['id']}")
    if trained.is_dir():  # not moved yet, or a copy was cut short: the job's own model is still whole
        _describe(trained, job, training_file)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            os.replace(trained, staging)
        except OSError:  # another filesystem (a separate volume): copy, then retire the job's copy
            shutil.copytree(trained, staging)
            retired = trained.with_name(f"{trained.name}.published")
            os.replace(trained, retired)
            shutil.rmtree(retired)
    elif published_by(staging) != job["id"]:
        raise FileNotFoundError(f"job {job['id']} has no model to publish")
    os.replace(staging, target)
    return target


def publishing(job: dict[str, Any], models_dir: Path) -> bool:
    """Whether the job's model was published, or moved halfway there, before a restart."""
    name = job["plan"]["model_name"]
    return job["id"] in (published_by(models_dir / name), published_by(models_dir / f".{name}.publishing"))


def _describe(trained: Path, job: dict[str, Any], training_file: dict[str, Any] | None) -> None:
    """What the model directory says of the job that made it: job.json, and a section of its card."""
    (trained / RESUME_FILE).unlink(missing_ok=True)
    record = {"job": job["id"], "model": job["model"], "training_file": training_file,
              "settings": job["plan"]["settings"], "hyperparameters": job["plan"]["hyperparameters"]}
    (trained / JOB_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _add_to_card(trained / CARD_FILE, record)


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
    if "\n## Training job\n" in existing:
        return  # described before a restart
    card.write_text(existing.rstrip("\n") + "\n" + "\n".join(lines), encoding="utf-8")
