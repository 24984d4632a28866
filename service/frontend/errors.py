"""Errors in each protocol's own shape: OpenAI's under /v1, TGI's everywhere else."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.frontend.schemas.errors import OpenAIError, OpenAIErrorDetail, TGIError

logger = logging.getLogger(__name__)

# Our kinds of error -> OpenAI's error "type" (TGI's "error_type" is the kind itself).
OPENAI_TYPES = {
    "validation": "invalid_request_error",
    "unknown_characters": "invalid_request_error",
    "not_found": "invalid_request_error",
    "too_large": "invalid_request_error",
    "unauthorized": "authentication_error",
    "forbidden": "permission_error",
    "conflict": "invalid_request_error",
    "overloaded": "rate_limit_error",
    "unavailable": "server_error",
    "generation": "server_error",
    "storage": "insufficient_storage",
}
KIND_BY_STATUS = {
    401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large", 429: "overloaded", 503: "unavailable",
    507: "storage",
}
RETRY_AFTER_S = 1


class ServiceError(Exception):
    """A request the service refuses or cannot serve, with its HTTP status and a clear message."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or KIND_BY_STATUS.get(status, "validation")
        self.code = code
        self.headers = headers or {}


def is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def error_body(error: ServiceError, openai: bool) -> dict[str, Any]:
    if openai:
        detail = OpenAIErrorDetail(message=error.message, type=OPENAI_TYPES.get(error.kind, "server_error"),
                                   param=error.param, code=error.code)
        return OpenAIError(error=detail).model_dump()
    kind = "validation" if error.kind == "unknown_characters" else error.kind
    return TGIError(error=error.message, error_type=kind).model_dump()


def error_response(request: Request, error: ServiceError) -> JSONResponse:
    """The error in the route's protocol. Invalid requests are 422 for TGI and 400 for OpenAI;
    a prompt with characters outside the vocabulary is 422 for both."""
    openai = is_openai(request)
    status = 400 if openai and error.kind == "validation" and error.status == 422 else error.status
    headers = dict(error.headers)
    if error.status == 429 or error.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(error, openai), status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable message naming each invalid field, and the first field's name."""
    parts, params = [], []
    for err in exc.errors():
        location = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "missing" and not location:
            parts.append("the request body is empty: send a JSON object")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {location!r}")
        elif err.get("type") == "json_invalid":
            parts.append(f"invalid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
        else:
            parts.append(f"{location or 'body'}: {err.get('msg')}")
        params.append(location or None)
    return "; ".join(parts) or "invalid request", next(iter(params), None)


def is_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this media type as JSON."""
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def unparsable_body(cause: BaseException | None) -> str:
    """Why the JSON decoder refused a body that is not simply malformed JSON."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not valid UTF-8 (byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the request body is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the request body holds a number with too many digits"
    return "the request body could not be read as JSON"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the protocol's error shape."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and not is_json(content_type):  # FastAPI then left the body unread
            message = f"send the body as JSON with 'Content-Type: application/json' (got {content_type!r})"
            return error_response(request, ServiceError(422, message, param="body"))
        message, param = describe_validation(exc)
        return error_response(request, ServiceError(422, message, param, kind="validation"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's only 400: a body its JSON decoder gave up on
            return error_response(request, ServiceError(422, unparsable_body(exc.__cause__), param="body"))
        error = ServiceError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))  # Allow, on 405
        return error_response(request, error)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(request, ServiceError(500, "internal error", kind="generation"))
