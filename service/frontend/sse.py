"""Server-Sent Events responses, encoded with FastAPI's own `fastapi.sse` event model and encoder.

Routes decide between JSON and a stream at run time (`"stream": true`), after all
validation and admission, so they return this response rather than being
generator endpoints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi.sse import EventSourceResponse, ServerSentEvent, format_sse_event
from pydantic import BaseModel

from service.frontend.errors import ServiceError, error_body

logger = logging.getLogger(__name__)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# For the OpenAPI schema of routes that may answer with a stream.
STREAM_RESPONSE: dict[int | str, dict[str, object]] = {
    200: {"content": {"text/event-stream": {}}, "description": "a JSON answer, or Server-Sent Events"}
}


def encode(event: ServerSentEvent) -> bytes:
    data = event.raw_data
    if data is None and event.data is not None:
        payload = event.data
        data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return format_sse_event(data_str=data, event=event.event, id=event.id, retry=event.retry,
                            comment=event.comment)


def encode_data(data: str) -> bytes:
    """A data-only event from JSON text: the per-character fast path, skipping the event model."""
    return format_sse_event(data_str=data)


def sse_response(events: AsyncIterator[ServerSentEvent | bytes], openai: bool) -> EventSourceResponse:
    """A stream of events (or events already encoded); an unexpected failure ends it with an
    error event in the protocol's shape."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event if isinstance(event, bytes) else encode(event)
        except Exception:
            logger.exception("stream failed")
            error = ServiceError(500, "internal error while streaming", kind="generation")
            yield encode(ServerSentEvent(data=error_body(error, openai)))

    return EventSourceResponse(body(), headers=STREAM_HEADERS)
