"""OpenAI-compatible routes: `POST /v1/completions` and `GET /v1/models`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import ServerSentEvent

from service.engine.sequences import Finished, GeneratedToken
from service.engine.stopping import FinishReason
from service.frontend.admission import Admitted, admit, log_completion, log_if_left
from service.frontend.errors import ServiceError, error_body
from service.frontend.generation import ClientGone, GenerationSpec, SequenceResult, best_first, disconnect_of
from service.frontend.models import ModelView
from service.frontend.schemas.errors import OPENAI_GENERATION, OPENAI_LISTING, OPENAI_MODEL
from service.frontend.schemas.openai import (
    Choice,
    Completion,
    CompletionRequest,
    Logprobs,
    ModelCard,
    ModelDetail,
    ModelList,
    Usage,
)
from service.frontend.sse import STREAM_RESPONSE, sse_response
from service.frontend.state import ServiceState, ready_service
from service.frontend.stream_text import KEEPALIVE, OpenAIChunks, data_event
from service.frontend.streams import chunk_ids

router = APIRouter(prefix="/v1", tags=["OpenAI"])
DEFAULT_MAX_TOKENS = 16
CARD_FILE = "README.md"  # the model card charlm train writes (training imports nothing from here)


async def admit_completion(state: ServiceState, request: Request, body: CompletionRequest) -> Admitted:
    """One sequence per (prompt, candidate), candidate j drawing with seed + j: n per prompt, or
    best_of of which the best n are answered. Choice index = prompt index * n + j."""
    count = len(body.prompts) * body.candidates
    if count > state.settings.max_n:  # before building a list that long
        param = "best_of" if body.best_of else "n"
        raise ServiceError(422, f"{count} sequences requested (prompts x {param}); the limit is "
                           f"{state.settings.max_n}", param=param)
    prompts = [prompt for prompt in body.prompts for _ in range(body.candidates)]
    offsets = [j for _ in body.prompts for j in range(body.candidates)]
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    interval = state.settings.stream_interval if body.stream else 0
    spec = GenerationSpec(max_tokens, body.sampling(), tuple(body.stop or ()), body.logprobs or 0, interval)
    return await admit(state, request, body.model, prompts, spec, "prompt", "max_tokens", offsets)


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


def usage(ends: list[Finished], candidates: int) -> Usage:
    """Every candidate's characters count (as OpenAI counts best_of), each prompt once."""
    prompt_tokens = sum(end.prompt_tokens for end in ends[::candidates])
    completion_tokens = sum(end.generated_tokens for end in ends)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


@router.post("/completions", response_model=Completion, responses={**STREAM_RESPONSE, **OPENAI_GENERATION})
async def completions(
    body: CompletionRequest, request: Request, state: Annotated[ServiceState, Depends(ready_service)]
) -> Completion | Response:
    """Complete each prompt (`n` choices each); `stream: true` answers with Server-Sent Events."""
    admitted = await admit_completion(state, request, body)
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return sse_response(completion_events(admitted, body, request, completion_id, created), openai=True)
    try:
        results = await admitted.queued.results(disconnect_of(request.receive))
    except ClientGone:
        return Response(status_code=499)
    ends = [r.finished for r in results]
    log_completion(admitted, "/v1/completions", ends)
    choices: list[Choice] = []
    for start in range(0, len(results), body.candidates):  # one prompt's candidates
        group = results[start : start + body.candidates]
        chosen = best_first(group)[: body.n] if body.candidates > body.n else range(body.n)
        for i in chosen:
            choices.append(choice(len(choices), group[i], admitted.prompts[start], body))
    return Completion(id=completion_id, created=created, model=admitted.view.name, choices=choices,
                      usage=usage(ends, body.candidates))


async def completion_events(
    admitted: Admitted, body: CompletionRequest, request: Request, completion_id: str, created: int
) -> AsyncIterator[ServerSentEvent | bytes]:
    """The echoed prompts, then the characters of each choice as they come (those ready together in
    one chunk), a chunk with each choice's finish reason, usage when asked, and `[DONE]`."""
    name = admitted.view.name

    def chunk(choices: list[Choice], usage_: Usage | None = None) -> ServerSentEvent:
        return ServerSentEvent(data=Completion(id=completion_id, created=created, model=name, choices=choices,
                                               usage=usage_))

    try:
        if body.echo:
            for index, prompt in enumerate(admitted.prompts):
                yield chunk([Choice(text=prompt, index=index)])
        chunks = OpenAIChunks(completion_id, created, name, body.logprobs)
        ends: dict[int, Finished] = {}
        queued, chars = admitted.queued, admitted.queued.chars
        async for ready in queued.updates():
            if ready is None:
                yield KEEPALIVE
                continue
            parts: list[str] = []
            for sequence in ready:
                index, end = sequence.index, sequence.end
                if body.logprobs is None:
                    text = "".join(chars[i] for i in chunk_ids(sequence.take()[0]).tolist())
                    if text:
                        parts.append(chunks.text_only(index, text))
                elif tokens := queued.tokens(sequence):
                    parts.append(chunks.characters(index, tokens, len(admitted.prompts[index]) if body.echo else 0))
                if end is None:
                    continue
                ends[index] = end
                if end.reason is FinishReason.ERROR:
                    error = ServiceError(500, end.error or "generation failed", kind="generation")
                    yield ("".join(parts) + data_event(json.dumps(error_body(error, openai=True)))).encode()
                    return
                choice_end = Completion(id=completion_id, created=created, model=name,
                                        choices=[Choice(text="", index=index, finish_reason=end.reason.value)])
                parts.append(data_event(choice_end.model_dump_json()))
            yield "".join(parts).encode()
        ordered = [ends[i] for i in sorted(ends)]
        log_completion(admitted, "/v1/completions", ordered)
        if body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], usage(ordered, body.n))
        yield ServerSentEvent(raw_data="[DONE]")
    finally:
        log_if_left(admitted)


def model_card(view: ModelView) -> dict[str, Any]:
    info = view.info
    assert info is not None
    return {"id": view.name, "created": int(view.loaded_at), "architecture": info.architecture,
            "parameters": info.parameters, "vocab_size": len(info.chars), "context_length": info.context_length,
            "version": info.version}


@router.get("/models", response_model=ModelList, responses=OPENAI_LISTING)
async def list_models(state: Annotated[ServiceState, Depends(ready_service)]) -> ModelList:
    """The models this server generates with: architecture, parameters, vocabulary, context, version
    (`created` is when this version was loaded)."""
    assert state.models is not None
    return ModelList(data=[ModelCard(**model_card(view)) for view in state.models.ready])


@router.get("/models/{name}", response_model=ModelDetail, responses=OPENAI_MODEL)
async def model_detail(name: str, state: Annotated[ServiceState, Depends(ready_service)]) -> ModelDetail:
    """One model, with its model card's text (where it came from: corpus, training, samples)."""
    view, _ = state.model(name, param="name")
    return ModelDetail(**model_card(view), card=await asyncio.to_thread(read_card, view.path))


def read_card(directory: Path) -> str | None:
    try:
        return (directory / CARD_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
