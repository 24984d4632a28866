"""A running job's events file (`charlm train --events`) read into the job's events, checkpoints and
progress. What was read is recorded with the file offset it ends at, in one transaction, so after a
restart reading goes on exactly where it stopped."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from service.jobs.store import Store

logger = logging.getLogger(__name__)
MAX_READ = 1 << 20  # bytes per look: a long backlog is read over several ticks
MAX_ESTIMATE_S = 100 * 365 * 86400  # an estimate past this says only "never"
SAMPLE_SHOWN = 80  # characters of a sample in its event's message (all of it is in `data`)


def follow(store: Store, job: dict[str, Any], events_path: Path) -> None:
    """Read what the run wrote since the last look."""
    offset = job["events_offset"]
    try:
        with open(events_path, "rb") as f:
            f.seek(offset)
            chunk = f.read(MAX_READ)
    except FileNotFoundError:
        return
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for its newline
    if not complete and len(chunk) == MAX_READ:  # a line no event makes: passed over (its rest is unreadable)
        store.record_run(job["id"], offset + len(chunk), [], [], {})
        return
    if not complete:
        return
    reading = Reading(job)
    for line in complete.splitlines():
        try:
            reading.take(json.loads(line))
        except (ValueError, KeyError, TypeError):
            logger.warning("job %s: an unreadable event line was skipped", job["id"])
    store.record_run(job["id"], offset + len(complete), reading.events, reading.checkpoints, reading.progress)


class Reading:
    """Run events turned into job events (OpenAI's `message` and `metrics` types)."""

    def __init__(self, job: dict[str, Any]):
        self.plan = job["plan"]
        self.started_at = job["started_at"] or int(time.time())
        self.events: list[tuple[str, str, str, Any]] = []
        self.checkpoints: list[tuple[int, dict[str, Any]]] = []
        self.progress: dict[str, Any] = {}

    def take(self, event: dict[str, Any]) -> None:
        getattr(self, f"_{event['type']}", self._unknown)(event)

    def _start(self, event: dict[str, Any]) -> None:
        step = event["step"]
        said = f"Training resumed at step {step:,}" if event.get("resumed") else \
            f"Training started: {event['parameters']:,} parameters on {event['device']}, {event['total_steps']:,} steps"
        self.events.append(("info", "message", said, {"step": step, "total_steps": event["total_steps"]}))

    def _progress(self, event: dict[str, Any]) -> None:
        data = {k: event[k] for k in ("step", "train_loss", "lr", "chars_per_s")}
        data["total_steps"] = self.plan["total_steps"]
        self.events.append(("info", "metrics", f"Step {event['step']}/{data['total_steps']}: training loss "
                            f"{event['train_loss']:.4f}", data))
        self._advance(event["step"], event["chars_per_s"])

    def _eval(self, event: dict[str, Any]) -> None:
        data = {k: event[k] for k in ("step", "train_loss", "valid_loss", "lr")}
        data.update(total_steps=self.plan["total_steps"], valid_bpc=event["valid_bpc"])
        self.events.append(("info", "metrics", f"Step {event['step']}: training loss {event['train_loss']:.4f}, "
                            f"validation loss {event['valid_loss']:.4f}", data))
        if event["sample"]:
            shown = event["sample"][:SAMPLE_SHOWN].replace("\n", " ")
            self.events.append(("info", "message", f"Sample at step {event['step']}: {shown}",
                                {"step": event["step"], "sample": event["sample"]}))
        self._advance(event["step"], None)

    def _checkpoint(self, event: dict[str, Any]) -> None:
        step = event["step"]
        if event["kind"] == "best":
            metrics = {"step": step, "train_loss": event["train_loss"], "valid_loss": event["valid_loss"]}
            self.checkpoints.append((step, metrics))
            self.events.append(("info", "message", f"New best checkpoint at step {step}", {"step": step}))
        else:
            self.events.append(("debug", "message", f"State saved at step {step} to resume from", {"step": step}))

    def _end(self, event: dict[str, Any]) -> None:
        words = {"finished": "reached its last step", "early_stop": "stopped early (no better validation loss)",
                 "time_limit": "used its time budget", "stopped": "stopped when asked"}
        self.events.append(("info", "message", f"Training {words.get(event['reason'], event['reason'])} at step "
                            f"{event['step']}", {"step": event["step"], "reason": event["reason"]}))

    def _unknown(self, event: dict[str, Any]) -> None:
        logger.debug("ignoring run event %s", event.get("type"))

    def _advance(self, step: int, chars_per_s: float | None) -> None:
        self.progress.update(step=step, trained_tokens=step * self.plan["chars_per_step"])
        if chars_per_s:
            remaining_s = (self.plan["total_steps"] - step) * self.plan["chars_per_step"] / chars_per_s
            remaining_s = min(remaining_s, MAX_ESTIMATE_S)
            if self.plan.get("max_minutes"):
                budget_end = self.started_at + self.plan["max_minutes"] * 60
                remaining_s = min(remaining_s, max(0.0, budget_end - time.time()))
            self.progress["estimated_finish"] = int(time.time() + remaining_s)
