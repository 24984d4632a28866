"""Request ids, the body size limit, per-route request counts and a log line for every refusal,
as one pure ASGI middleware (pure ASGI so that streamed responses pass through untouched)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.frontend.errors import ServiceError, error_body
from service.frontend.metrics import ServiceMetrics

REQUEST_ID_HEADER = "x-request-id"
MODEL_HEADER = "x-charlm-model"  # on generation responses: the model that answered,
VERSION_HEADER = "x-charlm-model-version"  # and its version (the weights' fingerprint)
SAFE_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")  # a client's id is echoed only if it is tame


logger = logging.getLogger("service.requests")


class BodyTooLarge(Exception):
    """Content-Length announces more than the limit: refused before the app sees the request."""


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int,
                 upload_limits: dict[str, int] | None = None):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.upload_limits = upload_limits or {}  # POST paths that take files: their own body limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client_id = headers.get(REQUEST_ID_HEADER, "")
        request_id = client_id if SAFE_REQUEST_ID.match(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        scope["state"]["started_at"] = time.monotonic()  # a request's time limit counts from here
        status = {"code": 500, "started": False}
        started_at = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.update(code=message["status"], started=True)
                response_headers = MutableHeaders(scope=message)
                response_headers[REQUEST_ID_HEADER] = request_id
                if (answered := scope["state"].get("model_version")) is not None:
                    response_headers[MODEL_HEADER], response_headers[VERSION_HEADER] = answered
            await send(message)

        limit = self.max_body_bytes
        if scope["method"] == "POST":
            limit = self.upload_limits.get(scope["path"], limit)
        try:
            if declared_length(headers) > limit:
                raise BodyTooLarge()
            await self.app(scope, self._limited(receive, limit), send_with_id)
        except BodyTooLarge:
            await self._too_large(scope, send_with_id, limit)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(route, str(status["code"])).inc()
            if status["code"] >= 400:  # successes log their own line, with the model and timings
                logger.info("request %s %s %s -> %s in %.1f ms", request_id, scope["method"], scope["path"],
                            status["code"], (time.perf_counter() - started_at) * 1000)

    def _limited(self, receive: Receive, limit: int) -> Receive:
        """Count the body as it arrives, for bodies sent without a Content-Length.

        Raises HTTPException(413), which FastAPI's body reading lets through to the error handlers.
        """
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        return limited

    async def _too_large(self, scope: Scope, send: Send, limit: int) -> None:
        error = ServiceError(413, f"request body exceeds the limit of {limit} bytes")
        body: Any = error_body(error, openai=str(scope.get("path", "")).startswith("/v1/"))
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def declared_length(headers: Headers) -> int:
    """The Content-Length, or 0 when absent or not a number (then the body is counted as it comes)."""
    try:
        return int(headers.get("content-length") or 0)
    except ValueError:
        return 0
