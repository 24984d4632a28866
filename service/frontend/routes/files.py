"""OpenAI's Files API for training texts: `POST /v1/files` takes a plain UTF-8 text (not JSONL) as
multipart `file` with `purpose=fine-tune`. Admin key; CHARLM_TRAINING=1."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from service.frontend.errors import ServiceError
from service.frontend.schemas.errors import TRAINING_ERRORS
from service.frontend.state import training_service
from service.jobs.files import JobError, delete_file, file_object, file_path, save_upload
from service.jobs.store import Store

router = APIRouter(prefix="/v1", tags=["training"], responses=TRAINING_ERRORS)
Jobs = Annotated[Store, Depends(training_service)]
MAX_FORM_FIELD_BYTES = 1024  # purpose, and nothing else of size


def refused(exc: JobError) -> ServiceError:
    kinds = {404: "not_found", 409: "conflict", 413: "too_large", 507: "storage"}
    return ServiceError(exc.status, exc.message, param=exc.param, code=exc.code, kind=kinds.get(exc.status))


@router.post("/files")
async def upload_file(request: Request, jobs: Jobs) -> dict[str, Any]:
    """Upload a training text: multipart form with `file` and `purpose=fine-tune`."""
    settings = request.app.state.service.settings
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ServiceError(415, "send the file as multipart/form-data with fields 'file' and 'purpose'",
                           param="file", kind="validation")
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_FORM_FIELD_BYTES)
    except HTTPException as exc:
        raise ServiceError(400, f"the multipart form cannot be read: {exc.detail}", param="file") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise ServiceError(400, "the form has no file: send it in the field 'file'", param="file")
    if not isinstance(purpose, str):
        raise ServiceError(400, "the form has no 'purpose' (use fine-tune)", param="purpose")
    if upload.size is not None and upload.size > settings.max_upload_bytes:
        raise ServiceError(413, f"the file exceeds the upload limit of {settings.max_upload_bytes:,} bytes "
                           "(CHARLM_MAX_UPLOAD_BYTES)", param="file")
    content = await upload.read()
    await upload.close()
    try:
        record = await asyncio.to_thread(save_upload, jobs, settings.data_dir, settings.data_quota_bytes,
                                         upload.filename or "upload.txt", purpose, content)
    except JobError as exc:
        raise refused(exc) from None
    return file_object(record)


@router.get("/files")
async def list_files(jobs: Jobs) -> dict[str, Any]:
    files = await asyncio.to_thread(jobs.files)
    return {"object": "list", "data": [file_object(f) for f in files], "has_more": False}


@router.get("/files/{file_id}")
async def get_file(file_id: str, jobs: Jobs) -> dict[str, Any]:
    return file_object(await _file(jobs, file_id))


@router.get("/files/{file_id}/content", responses={200: {"content": {"text/plain": {}}, "description": "the text"}})
async def file_content(file_id: str, request: Request, jobs: Jobs) -> FileResponse:
    await _file(jobs, file_id)
    path = file_path(request.app.state.service.settings.data_dir, file_id)
    return FileResponse(path, media_type="text/plain; charset=utf-8")


@router.delete("/files/{file_id}")
async def remove_file(file_id: str, request: Request, jobs: Jobs) -> dict[str, Any]:
    try:
        await asyncio.to_thread(delete_file, jobs, request.app.state.service.settings.data_dir, file_id)
    except JobError as exc:
        raise refused(exc) from None
    return {"id": file_id, "object": "file", "deleted": True}


async def _file(jobs: Store, file_id: str) -> dict[str, Any]:
    record = await asyncio.to_thread(jobs.file, file_id)
    if record is None:
        raise ServiceError(404, f"no file {file_id!r}", param="file_id", code="file_not_found")
    return record
