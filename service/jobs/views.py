"""Jobs, events and checkpoints in OpenAI's shapes (`fine_tuning.job`, `.event`, `.checkpoint`), with
what charlm knows besides under `charlm`."""

from __future__ import annotations

from typing import Any


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    plan, request = row["plan"], row["request"]
    error = row["error"]
    return {
        "id": row["id"], "object": "fine_tuning.job", "created_at": row["created_at"],
        "finished_at": row["finished_at"], "model": row["model"], "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "charlm", "status": row["status"], "hyperparameters": plan["hyperparameters"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": plan["hyperparameters"]}},
        "training_file": request["training_file"], "validation_file": request["validation_file"],
        "result_files": [], "trained_tokens": row["trained_tokens"], "seed": plan["seed"],
        "suffix": request["suffix"], "user_provided_suffix": request["suffix"],
        "estimated_finish": row["estimated_finish"], "integrations": [], "metadata": request["metadata"],
        "error": None if error is None else {**error, "param": None},
        "charlm": {
            "step": row["step"], "total_steps": plan["total_steps"], "chars_per_step": plan["chars_per_step"],
            "parameters": plan["parameters"], "max_minutes": plan["max_minutes"], "settings": plan["settings"],
            "model_name": plan["model_name"], "paused": row["status"] == "paused",
        },
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"ftevent-{row['seq']}", "object": "fine_tuning.job.event", "created_at": row["created_at"],
        "level": row["level"], "message": row["message"], "data": row["data"], "type": row["type"],
    }


def checkpoint_object(row: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"ftckpt-{row['seq']}", "object": "fine_tuning.job.checkpoint", "created_at": row["created_at"],
        "fine_tuning_job_id": row["job_id"], "fine_tuned_model_checkpoint": job["plan"]["model_name"],
        "step_number": row["step"], "metrics": row["metrics"],
    }


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A list answer of at most `limit` items, from `limit + 1` fetched (the extra one says there are more)."""
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[:limit][-1]["id"] if items else None}


def sequence_of(event_id: str | None) -> int:
    """`ftevent-12` (or `12`, as Last-Event-ID sends it) -> 12; 0 for none or garbage."""
    if not event_id:
        return 0
    digits = event_id.rsplit("-", 1)[-1]
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 19 else 0
