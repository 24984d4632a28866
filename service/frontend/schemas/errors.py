"""Error bodies of both protocols, and the error responses each route documents in OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TGIError(BaseModel):
    error: str = Field(description="what was wrong, naming the field or character")
    error_type: str = Field(description="validation, not_found, unauthorized, forbidden, conflict, too_large, "
                                        "overloaded, unavailable or generation")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, "
                                  "rate_limit_error or server_error")
    param: str | None = Field(description="the request field at fault, when there is one")
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}


def error_responses(model: type[BaseModel], statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given statuses, all with the protocol's error body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, description in statuses.items():
        response: dict[str, Any] = {"model": model, "description": description}
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[status] = response
    return responses


AUTH = {401: "the API key is set and the request lacks `Authorization: Bearer <key>`"}
GENERATION = {
    **AUTH,
    404: "no loaded model has that name",
    413: "the request body is over the size limit",
    429: "the model's queue is full; retry after `Retry-After` seconds",
    500: "the model failed while generating (the engine recovers; other requests are unaffected)",
    503: "the service is starting or shutting down",
}
TGI_GENERATION = error_responses(TGIError, {
    **GENERATION, 422: "invalid request, or prompt characters outside the model's vocabulary",
})
OPENAI_GENERATION = error_responses(OpenAIError, {
    **GENERATION, 400: "invalid request", 422: "prompt characters outside the model's vocabulary",
})
OPENAI_LISTING = error_responses(OpenAIError, {**AUTH, 503: GENERATION[503]})
TGI_AUTH = error_responses(TGIError, AUTH)
OPENAI_MODEL = error_responses(OpenAIError, {**AUTH, 404: "no served model has that name", 503: GENERATION[503]})
ADMIN = {
    401: "the request lacks `Authorization: Bearer <CHARLM_ADMIN_KEY>`",
    403: "administration is off: CHARLM_ADMIN_KEY is unset",
    503: "the service is starting or shutting down",
}
ADMIN_ERRORS = error_responses(TGIError, ADMIN)
ADMIN_UNLOAD_ERRORS = error_responses(TGIError, {
    **ADMIN, 404: "no model directory has that name", 409: "the model is not ready (loading, unloaded or failed)",
})
TRAINING_ERRORS = error_responses(OpenAIError, {
    400: "invalid request: the message names the field (`param`)",
    401: "the request lacks `Authorization: Bearer <CHARLM_ADMIN_KEY>` (the API key does not open training)",
    403: "training is off (CHARLM_TRAINING unset) or no admin key is configured",
    404: "no file or job has that id, or the model is neither a preset nor served",
    409: "the file is in use, the job cannot change so, or the queue of jobs is full",
    413: "the upload or body is over its size limit",
    415: "an upload that is not multipart/form-data",
    507: "the data quota would be exceeded: the message gives the quota, what is used and what is needed",
})
