"""A run's events as JSON lines (`charlm train --events FILE`), for whoever follows the run from
outside: the training service turns them into a job's events, metrics and checkpoints.

Each line is one object with `type` and `time` (Unix seconds):
- `start`: `step` (where the run begins: 0, or the checkpoint it resumes), `resumed`, `total_steps`,
  `chars_per_step`, `parameters`, `train_chars`, `valid_chars`, `device`;
- `progress`, every few steps: `step`, `train_loss` (of the last batch), `lr`, `chars_per_s`;
- `eval`: `step`, `train_loss`, `valid_loss`, `valid_bpc`, `lr`, `best` (a new best), `sample`;
- `checkpoint`: `step`, `kind` (`best`: the model directory now holds this step's weights, with
  its `train_loss` and `valid_loss`; `resume`: the latest state, kept to continue from);
- `end`: `step`, `reason` (`finished`, `early_stop`, `time_limit` or `stopped`).
Lines are appended and flushed one by one, so a reader never sees half of one unless the writer
died while writing it (the reader waits for its newline).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


class EventLog:
    """Appends events to a file; does nothing without one."""

    def __init__(self, path: Path | None):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[str] | None = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115
        if self.file is not None and path is not None and _ends_mid_line(path):
            self.file.write("\n")  # a run killed while writing left half a line: this run's start on a line of its own

    def emit(self, event_type: str, **fields: Any) -> None:
        if self.file is None:
            return
        event = {"type": event_type, "time": round(time.time(), 3), **fields}
        self.file.write(json.dumps(event, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"
