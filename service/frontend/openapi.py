"""The OpenAPI schema, with this server's configured limits written into the request schemas, so
that clients (and schema-driven fuzzers) see the bounds the server enforces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.settings import Settings

JSONSchema = dict[str, Any]


def limit(schema: JSONSchema, json_type: str, **bounds: int) -> None:
    """Add bounds to a property, or to its branch of the given type when it is a union."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == json_type:
            branch.update(bounds)


def document_limits(components: dict[str, JSONSchema], settings: Settings) -> None:
    def properties(name: str) -> dict[str, JSONSchema]:
        props: dict[str, JSONSchema] = components[name]["properties"]
        return props

    tgi = properties("Parameters")
    limit(tgi["max_new_tokens"], "integer", maximum=settings.max_new_tokens)
    limit(tgi["best_of"], "integer", maximum=settings.max_n)
    limit(tgi["truncate"], "integer", maximum=settings.max_prompt_chars)
    for request in ("GenerateRequest", "CompatGenerateRequest"):
        limit(properties(request)["inputs"], "array", minItems=1, maxItems=settings.max_n)
    for request in ("CompletionRequest", "ChatCompletionRequest"):
        fields = properties(request)
        for name in ("max_tokens", "max_completion_tokens"):
            limit(fields[name], "integer", maximum=settings.max_new_tokens)
        limit(fields["n"], "integer", maximum=settings.max_n)
    completion = properties("CompletionRequest")
    limit(completion["best_of"], "integer", maximum=settings.max_n)
    for branch in completion["prompt"]["anyOf"]:  # a text, texts, a text's character ids, texts' ids
        items = branch.get("items", {})
        if branch.get("type") == "string":
            branch["maxLength"] = settings.max_prompt_chars
        elif items.get("type") == "integer":
            branch.update(minItems=1, maxItems=settings.max_prompt_chars)
        elif branch.get("type") == "array":
            branch.update(minItems=1, maxItems=settings.max_n)
            if items.get("type") == "array":
                items.update(minItems=1, maxItems=settings.max_prompt_chars)


def openapi_with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """A replacement for `app.openapi` that builds the schema once, limits included."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            document_limits(schema["components"]["schemas"], settings)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
