"""Uploaded texts: checked to be UTF-8, stored under an id of ours (a user's filename never becomes
a path), and the disk quota that covers files, jobs and checkpoints."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from service.jobs.store import Store, now
from training.plan import decode_corpus

FILES_DIR = "files"
JOBS_DIR = "jobs"
MAX_FILENAME = 255
PURPOSES = ("fine-tune",)


class JobError(Exception):
    """A request about files or jobs that cannot be done: status, message, the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def file_path(data_dir: Path, file_id: str) -> Path:
    return data_dir / FILES_DIR / file_id


def used_bytes(data_dir: Path) -> int:
    """What files and jobs (their checkpoints, events and logs) take on disk now."""
    total = 0
    for top in (data_dir / FILES_DIR, data_dir / JOBS_DIR):
        for root, _, names in os.walk(top):
            for name in names:
                with contextlib.suppress(OSError):  # removed meanwhile
                    total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_quota(data_dir: Path, quota: int, adding: int, what: str) -> None:
    used = used_bytes(data_dir)
    if used + adding > quota:
        raise JobError(507, f"the data quota (CHARLM_DATA_QUOTA_BYTES) is {quota:,} bytes; {used:,} are used "
                       f"and {what} needs {adding:,} more: delete files or finished jobs' data",
                       code="quota_exceeded")


def decode_text(content: bytes) -> str:
    """The text of an upload; 400 with the byte offset of the first byte that is not UTF-8."""
    if not content:
        raise JobError(400, "the file is empty", param="file")
    try:
        return decode_corpus(content)  # as charlm train reads its --data
    except UnicodeDecodeError as exc:
        raise JobError(400, f"the file is not UTF-8 text: byte {exc.start} ({content[exc.start]:#04x}) "
                       f"{exc.reason}", param="file", code="invalid_encoding") from None


def save_upload(store: Store, data_dir: Path, quota: int, filename: str, purpose: str,
                content: bytes) -> dict[str, Any]:
    """Check and keep an uploaded text; its record."""
    if purpose not in PURPOSES:
        raise JobError(400, f"purpose must be one of {list(PURPOSES)}, got {purpose!r}", param="purpose")
    text = decode_text(content)
    check_quota(data_dir, quota, len(content), "this file")
    record: dict[str, Any] = {
        "id": f"file-{secrets.token_hex(12)}", "filename": filename[:MAX_FILENAME], "purpose": purpose,
        "bytes": len(content), "characters": len(text), "alphabet": "".join(sorted(set(text))),
        "created_at": now(),
    }
    path = file_path(data_dir, record["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, path)  # whole or absent
    try:
        store.add_file(record)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return record


def delete_file(store: Store, data_dir: Path, file_id: str) -> None:
    if store.file(file_id) is None:
        raise JobError(404, f"no file {file_id!r}", param="file_id", code="file_not_found")
    users = store.delete_file(file_id)
    if users:
        raise JobError(409, f"file {file_id} is in use by unfinished job(s) {users}; cancel them first",
                       param="file_id", code="file_in_use")
    file_path(data_dir, file_id).unlink(missing_ok=True)


def file_object(record: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's file object, with the text's length in characters."""
    return {
        "id": record["id"], "object": "file", "bytes": record["bytes"], "created_at": record["created_at"],
        "filename": record["filename"], "purpose": record["purpose"], "status": "processed",
        "status_details": None, "expires_at": None, "characters": record["characters"],
    }
