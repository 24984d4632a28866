"""A fine-tuning job request turned into a planned job, or a 4xx naming what is wrong.

OpenAI's hyperparameters map onto `charlm train` settings: `n_epochs` sets max_iters (passes over
the training text), `learning_rate_multiplier` scales lr and min_lr, `batch_size` is charlm's own;
"auto" keeps the preset's (or the base model's) value. Every other key is a `charlm train --set`
setting, checked by training's own code (`training.plan`).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from service.jobs.files import JobError, check_quota
from service.jobs.store import Store, now
from training.plan import PRESETS, ConfigError, RunPlan, plan_run, steps_for_epochs

OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
CHECKPOINT_BYTES_PER_PARAMETER = 32  # float32 weights, Adam's two moments, and a resume copy of each
MAX_SHOWN = 20  # missing characters named in an error
# What one job may ask for, beyond the checks of charlm train: a request must not make the server
# build a model it cannot hold even to count it, nor a run that no estimate can describe.
SETTING_LIMITS = {"n_layer": 256, "n_head": 1024, "n_embd": 65_536, "hidden_size": 65_536, "block_size": 1 << 20,
                  "seq_len": 1 << 20, "batch_size": 1 << 16, "eval_iters": 100_000, "sample_chars": 10_000}
MAX_STEPS = 10**9


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


def create_job(store: Store, settings: Any, request: dict[str, Any], base_path: Path | None) -> dict[str, Any]:
    """Check the request, plan the run, queue the job (409 when the queue is full); the job's row.
    base_path: the served model's directory when `model` names one, else None (a preset)."""
    model = request["model"]
    if base_path is None and model not in PRESETS:
        raise JobError(404, f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a served model",
                       param="model", code="model_not_found")
    files = {name: _file(store, request, name) for name in ("training_file", "validation_file")}
    training = files["training_file"]
    assert training is not None
    suffix = request.get("suffix")
    if suffix is not None and not SUFFIX.fullmatch(suffix):
        raise JobError(400, "suffix must be 1 to 40 letters, digits, '_', '.' or '-', starting with a letter or "
                       "digit", param="suffix")
    alphabet = "".join(sorted(set("".join(f["alphabet"] for f in files.values() if f))))
    plan, shown = _plan(request, training, files["validation_file"], len(alphabet), base_path)
    if plan.vocab is not None:
        for name, record in files.items():
            if record is not None:
                _check_covered(record, plan.vocab, model, name)
    _check_long_enough(plan, training, files["validation_file"])
    estimate = plan.parameters * CHECKPOINT_BYTES_PER_PARAMETER
    check_quota(settings.data_dir, settings.data_quota_bytes, estimate, "this job's checkpoints (estimated)")
    job_id = new_job_id()
    job = {
        "id": job_id, "created_at": now(), "model": model,
        "request": {k: request.get(k) for k in ("training_file", "validation_file", "suffix", "metadata")},
        "plan": {
            "preset": None if base_path else model, "base_path": str(base_path) if base_path else None,
            "settings": shown["settings"], "hyperparameters": shown["hyperparameters"],
            "seed": plan.train_config["seed"], "total_steps": plan.total_steps,
            "chars_per_step": plan.chars_per_step, "parameters": plan.parameters,
            "max_minutes": plan.train_config["max_minutes"],
            "model_name": f"{suffix or model}-{job_id.removeprefix('ftjob-')[:8]}",
            "training_chars": training["characters"],
        },
    }
    refused = store.add_job(job, settings.max_queued_jobs)
    if refused == "full":
        raise JobError(409, f"{settings.max_queued_jobs} jobs are queued already (CHARLM_MAX_QUEUED_JOBS); "
                       "try again when one has started", code="queue_full")
    if refused == "gone":
        raise JobError(400, "a file of this job was deleted while it was being created", param="training_file",
                       code="file_not_found")
    row = store.job(job_id)
    assert row is not None
    return row


def _file(store: Store, request: dict[str, Any], name: str) -> dict[str, Any] | None:
    file_id = request.get(name)
    if file_id is None:
        return None
    record = store.file(file_id)
    if record is None:
        raise JobError(400, f"{name} {file_id!r} does not exist (upload it with POST /v1/files)", param=name,
                       code="file_not_found")
    return record


def _plan(request: dict[str, Any], training: dict[str, Any], validation: dict[str, Any] | None,
          vocab_size: int, base_path: Path | None) -> tuple[RunPlan, dict[str, Any]]:
    """The run's settings: OpenAI's hyperparameters mapped, the rest passed to training's checks."""
    hyper = dict(request.get("hyperparameters") or {})
    openai = {k: hyper.pop(k) for k in OPENAI_HYPERPARAMETERS if k in hyper}
    chosen = {k: v for k, v in openai.items() if v != "auto"}
    settings: dict[str, Any] = {**hyper}
    if "batch_size" in chosen:
        settings["batch_size"] = chosen["batch_size"]
    if request.get("seed") is not None:
        settings.setdefault("seed", request["seed"])
    if "n_epochs" in chosen and "max_iters" in settings:
        raise JobError(400, "give n_epochs or max_iters, not both", param="hyperparameters.n_epochs")
    _check_limits(settings)
    plan = _checked_plan(request["model"], settings, vocab_size, base_path)
    if "learning_rate_multiplier" in chosen:
        factor = chosen["learning_rate_multiplier"]
        settings.update(lr=plan.train_config["lr"] * factor, min_lr=plan.train_config["min_lr"] * factor)
    if "n_epochs" in chosen:
        train_chars = training["characters"] * (1 if validation else 1 - plan.train_config["val_fraction"])
        settings["max_iters"] = steps_for_epochs(chosen["n_epochs"], int(train_chars), plan.chars_per_step)
    if "n_epochs" in chosen or "learning_rate_multiplier" in chosen:
        plan = _checked_plan(request["model"], settings, vocab_size, base_path)
    if plan.total_steps > MAX_STEPS:
        param = "hyperparameters.n_epochs" if "n_epochs" in chosen else "hyperparameters.max_iters"
        raise JobError(400, f"a job runs at most {MAX_STEPS:,} steps; this one asks for {plan.total_steps:,}",
                       param=param)
    epochs = plan.total_steps * plan.chars_per_step / max(1, training["characters"])
    shown = {
        "n_epochs": chosen.get("n_epochs", round(epochs, 3)), "batch_size": plan.train_config["batch_size"],
        "learning_rate_multiplier": chosen.get("learning_rate_multiplier", 1.0), **hyper,
    }
    return plan, {"settings": settings, "hyperparameters": shown}


def _check_limits(settings: dict[str, Any]) -> None:
    for name, limit in SETTING_LIMITS.items():
        value = settings.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise JobError(400, f"{name} is at most {limit:,} for a job (asked: {value:,})",
                           param=f"hyperparameters.{name}")


def _checked_plan(model: str, settings: dict[str, Any], vocab_size: int, base_path: Path | None) -> RunPlan:
    try:
        return plan_run(settings, vocab_size, preset=None if base_path else model, base=base_path)
    except ConfigError as exc:
        message = str(exc)
        named = [key for key in settings if re.search(rf"\b{re.escape(key)}\b", message)]
        param = f"hyperparameters.{named[0]}" if named else "hyperparameters"
        raise JobError(400, f"hyperparameters: {message}", param=param) from None


def _check_covered(record: dict[str, Any], vocab: list[str], model: str, name: str) -> None:
    missing = sorted(set(record["alphabet"]) - set(vocab))
    if missing:
        shown = "".join(repr(c) for c in missing[:MAX_SHOWN]) + (" …" if len(missing) > MAX_SHOWN else "")
        raise JobError(400, f"{name} has {len(missing)} character(s) that {model!r}'s vocabulary lacks: {shown}; "
                       "continue a model only on text in its alphabet, or train a preset", param=name,
                       code="unknown_characters")


def _check_long_enough(plan: RunPlan, training: dict[str, Any], validation: dict[str, Any] | None) -> None:
    need = plan.seq_len + 1
    fraction = plan.train_config["val_fraction"]
    parts = [("training_file", training["characters"] * (1 if validation else 1 - fraction))]
    parts.append(("validation_file", validation["characters"]) if validation
                 else ("training_file", training["characters"] * fraction))
    for name, chars in parts:
        if int(chars) < need:
            raise JobError(400, f"{name} is too short: one training sequence needs {need} characters "
                           f"(seq_len + 1) in each split, and it gives {int(chars)}", param=name,
                           code="file_too_short")
