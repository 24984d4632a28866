"""OpenAI's Fine-tuning API over `charlm train`: jobs, their events (a stream of them with
`?stream=true`), checkpoints, cancel, pause and resume. Admin key; CHARLM_TRAINING=1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.frontend.errors import ServiceError
from service.frontend.routes.files import refused
from service.frontend.schemas.errors import TRAINING_ERRORS
from service.frontend.schemas.fine_tuning import JobRequest
from service.frontend.sse import STREAM_HEADERS, STREAM_RESPONSE, encode
from service.frontend.state import ServiceState, training_service
from service.jobs.creation import create_job
from service.jobs.files import JobError
from service.jobs.runs import discard_model
from service.jobs.store import TERMINAL, Store
from service.jobs.views import checkpoint_object, event_object, job_object, page, sequence_of

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["training"], responses=TRAINING_ERRORS)
Jobs = Annotated[Store, Depends(training_service)]
Limit = Annotated[int, Query(ge=1, le=100)]
EVENTS_POLL_S = 0.25
EVENTS_PER_READ = 200


@router.post("")
async def create(body: JobRequest, request: Request, jobs: Jobs) -> dict[str, Any]:
    """Queue a job: `model` is a preset (a new model) or a served model (training continues from it)."""
    state: ServiceState = request.app.state.service
    try:
        row = await asyncio.to_thread(create_job, jobs, state.settings, body.settings(), served_path(state, body.model))
    except JobError as exc:
        raise refused(exc) from None
    return job_object(row)


def served_path(state: ServiceState, name: str) -> Path | None:
    views = state.models.views if state.models is not None else {}
    view = views.get(name)
    return None if view is None else Path(view.path)


@router.get("")
async def list_jobs(jobs: Jobs, after: str | None = None, limit: Limit = 20) -> dict[str, Any]:
    """Newest first; `after`: a job id, the page goes on from it."""
    if after is not None and await asyncio.to_thread(jobs.job, after) is None:
        raise ServiceError(404, f"no fine-tuning job {after!r} to page after", param="after", code="job_not_found")
    rows = await asyncio.to_thread(jobs.jobs, after, limit + 1)
    return page([job_object(row) for row in rows], limit)


@router.get("/{job_id}")
async def get_job(job_id: str, jobs: Jobs) -> dict[str, Any]:
    return job_object(await _job(jobs, job_id))


@router.post("/{job_id}/cancel")
async def cancel(job_id: str, request: Request, jobs: Jobs) -> dict[str, Any]:
    """A queued or paused job ends at once; a running one checkpoints at its next step, then ends."""
    ended = dict(status="cancelled", finished_at=int(time.time()), estimated_finish=None)
    job = await _change(jobs, job_id, "cancel", ("queued", "paused"), ended, "Job cancelled")
    if job["status"] == "cancelled":  # a paused job's checkpoints: nothing will use them
        await asyncio.to_thread(discard_model, request.app.state.service.settings.data_dir, job_id)
    return job


@router.post("/{job_id}/pause")
async def pause(job_id: str, jobs: Jobs) -> dict[str, Any]:
    """A running job checkpoints and stops; a queued one waits. Resume puts it back in the queue."""
    return await _change(jobs, job_id, "pause", ("queued",), dict(status="paused"), "Job paused")


@router.post("/{job_id}/resume")
async def resume(job_id: str, jobs: Jobs) -> dict[str, Any]:
    job = await _job(jobs, job_id)
    if not await asyncio.to_thread(jobs.move, job_id, ("paused",), "Job resumed: queued again", status="queued"):
        raise ServiceError(409, f"job {job_id} is {job['status']}; only a paused job resumes", param="job_id",
                           kind="conflict", code="job_not_paused")
    return job_object(await _job(jobs, job_id))


async def _change(jobs: Store, job_id: str, action: str, at_once: tuple[str, ...], fields: dict[str, Any],
                  message: str) -> dict[str, Any]:
    """Done at once from the `at_once` statuses; asked of the scheduler when running."""
    job = await _job(jobs, job_id)
    if not await asyncio.to_thread(jobs.move, job_id, at_once, message, **fields):
        asked = await asyncio.to_thread(jobs.move, job_id, ("running",), None, requested=action)
        if not asked:
            raise ServiceError(409, f"job {job_id} is {job['status']}: it cannot {action}", param="job_id",
                               kind="conflict", code="job_not_running")
    return job_object(await _job(jobs, job_id))


@router.get("/{job_id}/checkpoints")
async def checkpoints(job_id: str, jobs: Jobs, after: str | None = None, limit: Limit = 10) -> dict[str, Any]:
    """Each time the job's model got better (the model directory keeps the best)."""
    job = await _job(jobs, job_id)
    rows = await asyncio.to_thread(jobs.checkpoints, job_id, sequence_of(after), limit + 1)
    return page([checkpoint_object(row, job) for row in rows], limit)


@router.get("/{job_id}/events", responses=STREAM_RESPONSE)
async def events(job_id: str, request: Request, jobs: Jobs, after: str | None = None, limit: Limit = 20,
                 stream: bool = False) -> Any:
    """Newest first, paged with `after`; `?stream=true`: Server-Sent Events oldest first from `after`
    (or the Last-Event-ID header), until the job ends or pauses."""
    await _job(jobs, job_id)
    if not stream:
        rows = await asyncio.to_thread(jobs.events, job_id, sequence_of(after), limit + 1, True)
        return page([event_object(row) for row in rows], limit)
    start = sequence_of(request.headers.get("last-event-id") or after)
    state: ServiceState = request.app.state.service
    return EventSourceResponse(_event_stream(jobs, job_id, start, state), headers=STREAM_HEADERS)


async def _event_stream(jobs: Store, job_id: str, last: int, state: ServiceState) -> AsyncIterator[bytes]:
    quiet_since = time.monotonic()
    while not state.draining:
        rows = await asyncio.to_thread(jobs.events, job_id, last, EVENTS_PER_READ, False)
        for row in rows:
            last = row["seq"]
            yield encode(ServerSentEvent(id=str(last), data=event_object(row)))
        if rows:
            quiet_since = time.monotonic()
            continue
        job = await _job(jobs, job_id)
        if job["status"] in (*TERMINAL, "paused"):
            if await asyncio.to_thread(jobs.events, job_id, last, 1, False):
                continue  # written as it ended: sent before the end
            yield encode(ServerSentEvent(event="end", data=job_object(job)))
            return
        if time.monotonic() - quiet_since >= state.settings.sse_keepalive_s:
            quiet_since = time.monotonic()
            yield encode(ServerSentEvent(comment="keepalive"))
        await asyncio.sleep(EVENTS_POLL_S)


async def _job(jobs: Store, job_id: str) -> dict[str, Any]:
    row = await asyncio.to_thread(jobs.job, job_id)
    if row is None:
        raise ServiceError(404, f"no fine-tuning job {job_id!r}", param="job_id", code="job_not_found")
    return row
