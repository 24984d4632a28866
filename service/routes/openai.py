"""OpenAI-compatible routes: `POST /v1/completions` and `GET /v1/models`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import ServerSentEvent

from service.admission import Admitted, admit, log_completion, logged
from service.errors import ServiceError, error_body
from service.generation import ClientGone, GenerationSpec, SequenceResult
from service.schemas.errors import OPENAI_GENERATION, OPENAI_LISTING
from service.schemas.openai import (
    Choice,
    Completion,
    CompletionRequest,
    Logprobs,
    ModelCard,
    ModelList,
    Usage,
)
from service.sequences import Finished, GeneratedToken
from service.sse import STREAM_RESPONSE, encode_data, sse_response
from service.state import ServiceState, ready_service
from service.stopping import FinishReason

router = APIRouter(prefix="/v1", tags=["OpenAI"])
DEFAULT_MAX_TOKENS = 16


def admit_completion(state: ServiceState, request: Request, body: CompletionRequest) -> Admitted:
    """One sequence per (prompt, choice); choice index = prompt index * n + j."""
    if len(body.prompts) * body.n > state.settings.max_n:  # before building a list that long
        raise ServiceError(422, f"{len(body.prompts) * body.n} sequences requested (prompts x n); the limit "
                           f"is {state.settings.max_n}", param="n")
    prompts = [prompt for prompt in body.prompts for _ in range(body.n)]
    offsets = [j for _ in body.prompts for j in range(body.n)]
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    spec = GenerationSpec(max_tokens, body.sampling(), tuple(body.stop or ()), body.logprobs or 0)
    return admit(state, request, body.model, prompts, spec, "prompt", "max_tokens", offsets)


def logprobs_of(tokens: list[GeneratedToken], offset: int, wanted: int | None) -> Logprobs | None:
    """OpenAI's legacy logprobs for generated characters; offsets count an echoed prompt."""
    if wanted is None:
        return None
    return Logprobs(
        tokens=[t.text for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{a.text: a.logprob for a in t.top} for t in tokens] if wanted else None,
        text_offset=[offset + i for i in range(len(tokens))],
    )


def choice(index: int, result: SequenceResult, prompt: str, body: CompletionRequest) -> Choice:
    end = result.finished
    if end.reason is FinishReason.ERROR:
        raise ServiceError(500, end.error or "generation failed", kind="generation")
    echo = prompt if body.echo else ""
    return Choice(text=echo + end.text, index=index, finish_reason=end.reason.value,
                  logprobs=logprobs_of(result.tokens, len(echo), body.logprobs))


def usage(ends: list[Finished], n: int) -> Usage:
    prompt_tokens = sum(end.prompt_tokens for end in ends[::n])  # each prompt counted once
    completion_tokens = sum(end.generated_tokens for end in ends)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


@router.post("/completions", response_model=Completion, responses={**STREAM_RESPONSE, **OPENAI_GENERATION})
async def completions(
    body: CompletionRequest, request: Request, state: Annotated[ServiceState, Depends(ready_service)]
) -> Completion | Response:
    """Complete each prompt (`n` choices each); `stream: true` answers with Server-Sent Events."""
    admitted = admit_completion(state, request, body)
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        events = completion_events(admitted, body, request, completion_id, created)
        return sse_response(logged(admitted, events), openai=True)
    try:
        results = await admitted.submission.results(request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    ends = [r.finished for r in results]
    log_completion(admitted, "/v1/completions", ends)
    choices = [choice(i, r, p, body) for i, (r, p) in enumerate(zip(results, admitted.prompts, strict=True))]
    return Completion(id=completion_id, created=created, model=admitted.entry.name, choices=choices,
                      usage=usage(ends, body.n))


async def completion_events(
    admitted: Admitted, body: CompletionRequest, request: Request, completion_id: str, created: int
) -> AsyncIterator[ServerSentEvent | bytes]:
    def chunk(choices: list[Choice], usage_: Usage | None = None) -> ServerSentEvent:
        return ServerSentEvent(data=Completion(id=completion_id, created=created, model=admitted.entry.name,
                                               choices=choices, usage=usage_))

    header = {"id": completion_id, "object": "text_completion", "created": created, "model": admitted.entry.name}
    if body.echo:
        for index, prompt in enumerate(admitted.prompts):
            yield chunk([Choice(text=prompt, index=index)])
    ends: dict[int, Finished] = {}
    keepalive = request.app.state.service.settings.sse_keepalive_s
    async for item in admitted.submission.events(keepalive):
        if item is None:
            yield ServerSentEvent(comment="keep-alive")
            continue
        index, events = item
        offset = len(admitted.prompts[index]) if body.echo else 0
        for event in events:
            if isinstance(event, GeneratedToken):
                yield character_chunk(header, index, event, offset, body.logprobs)
                continue
            ends[index] = event
            if event.reason is FinishReason.ERROR:
                error = ServiceError(500, event.error or "generation failed", kind="generation")
                yield ServerSentEvent(data=error_body(error, openai=True))
                return
            yield chunk([Choice(text="", index=index, finish_reason=event.reason.value)])
    ordered = [ends[i] for i in sorted(ends)]
    log_completion(admitted, "/v1/completions", ordered)
    if body.stream_options is not None and body.stream_options.include_usage:
        yield chunk([], usage(ordered, body.n))
    yield ServerSentEvent(raw_data="[DONE]")


def character_chunk(
    header: dict[str, Any], index: int, event: GeneratedToken, offset: int, logprobs: int | None
) -> bytes:
    """A `Completion` chunk for one character, built without Pydantic: it runs per character."""
    lp = logprobs_of([event], offset + event.position - 1, logprobs)
    choice = {"text": event.text, "index": index, "logprobs": None if lp is None else lp.model_dump(),
              "finish_reason": None}
    data = {**header, "choices": [choice], "usage": None, "system_fingerprint": None}
    return encode_data(json.dumps(data, ensure_ascii=False))


@router.get("/models", response_model=ModelList, responses=OPENAI_LISTING)
async def list_models(state: Annotated[ServiceState, Depends(ready_service)]) -> ModelList:
    """The models this server generates with: architecture, parameters, vocabulary, context."""
    assert state.registry is not None
    cards = []
    for entry in state.registry.ready:
        assert entry.loaded is not None
        model = entry.loaded.model
        cards.append(ModelCard(id=entry.name, created=int(state.started_at), architecture=model.architecture,
                               parameters=model.num_parameters(), vocab_size=len(entry.loaded.vocab),
                               context_length=model.context_size))
    return ModelList(data=cards)

