"""OpenAI-compatible routes: `POST /v1/completions` and `GET /v1/models`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import ServerSentEvent

from service.control.registry import UnknownModelError
from service.engine.sequences import Finished, GeneratedToken, PromptToken
from service.engine.stopping import FinishReason
from service.frontend.admission import Admitted, admit, log_completion, log_if_left
from service.frontend.choice_stream import choice_events, failed, finish_reason
from service.frontend.errors import ServiceError
from service.frontend.generation import (
    ClientGone,
    GenerationSpec,
    SequenceResult,
    best_first,
    disconnect_of,
    text_of_ids,
)
from service.frontend.grammar import compile_grammar
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
    PromptLogprob,
    Usage,
)
from service.frontend.sse import STREAM_RESPONSE, sse_response
from service.frontend.state import ServiceState, ready_service
from service.frontend.stream_text import OpenAIChunks

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
    view, _ = await state.model(body.model)
    assert view.info is not None
    texts = [prompt_text(prompt, view.info.chars, view.name) for prompt in body.prompts]
    prompts = [prompt for prompt in texts for _ in range(body.candidates)]
    offsets = [j for _ in texts for j in range(body.candidates)]
    max_tokens = body.max_new_tokens(DEFAULT_MAX_TOKENS)
    interval = state.settings.stream_interval if body.stream else 0
    form = body.grammar_form()
    grammar = await compile_grammar(form, view.info.vocab, max_tokens, body.tokens_param) if form else None
    spec = GenerationSpec(max_tokens, body.sampling(), tuple(body.stop or ()), body.logprobs or 0, interval,
                          grammar=grammar, prompt_logprobs=body.prompt_scores)
    return await admit(state, request, body.model, prompts, spec, "prompt", body.tokens_param, offsets)


def prompt_text(prompt: str | list[int], chars: list[str], model: str) -> str:
    """A prompt's text; one given as character ids is decoded (422 for an id outside the vocabulary)."""
    if isinstance(prompt, str):
        return prompt
    return text_of_ids(prompt, chars, model, "prompt", "prompt names character id(s)")


def scored_prompt(end: Finished, prompt: str) -> tuple[PromptToken, ...]:
    """The prompt's scored characters (none for an empty prompt, which the model starts from its start
    character)."""
    return end.prompt_logprobs or () if prompt else ()


def echo_logprobs(scored: tuple[PromptToken, ...], wanted: int) -> Logprobs:
    """The prompt's part of an echo's logprobs: the first character's null, as OpenAI's."""
    return Logprobs(
        tokens=[t.text for t in scored],
        token_logprobs=[t.logprob for t in scored],
        top_logprobs=[None if t.logprob is None else {a.text: a.logprob for a in t.top[:wanted]} for t in scored]
        if wanted else None,
        text_offset=list(range(len(scored))),
    )


def vllm_prompt_logprobs(scored: tuple[PromptToken, ...], wanted: int) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's prompt_logprobs: per character (the first None), it and the `wanted` most likely, by id."""
    entries: list[dict[str, PromptLogprob] | None] = []
    for t in scored:
        if t.logprob is None:
            entries.append(None)
            continue
        entry = {str(t.id): PromptLogprob(logprob=t.logprob, rank=t.rank, decoded_token=t.text)}
        for rank, a in enumerate(t.top[:wanted], start=1):
            entry.setdefault(str(a.id), PromptLogprob(logprob=a.logprob, rank=rank, decoded_token=a.text))
        entries.append(entry)
    return entries


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


def choice(index: int, result: SequenceResult, prompt: str, body: CompletionRequest, scored: Finished) -> Choice:
    """One choice; `scored` is the end of the prompt's first candidate, which carries the prompt's scores."""
    end = result.finished
    if end.reason is FinishReason.ERROR:
        raise ServiceError(500, end.error or "generation failed", kind="generation")
    echo = prompt if body.echo else ""
    logprobs = logprobs_of(result.tokens, len(echo), body.logprobs)
    prompt_tokens = scored_prompt(scored, prompt)
    if logprobs is not None and body.echo:
        head = echo_logprobs(prompt_tokens, body.logprobs or 0)
        logprobs = Logprobs(tokens=head.tokens + logprobs.tokens, token_logprobs=head.token_logprobs +
                            logprobs.token_logprobs, top_logprobs=None if logprobs.top_logprobs is None or
                            head.top_logprobs is None else head.top_logprobs + logprobs.top_logprobs,
                            text_offset=head.text_offset + logprobs.text_offset)
    vllm = vllm_prompt_logprobs(prompt_tokens, body.prompt_logprobs) if body.prompt_logprobs is not None else None
    return Choice(text=echo + end.text, index=index, finish_reason=finish_reason(end.reason), logprobs=logprobs,
                  prompt_logprobs=vllm)


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
            choices.append(choice(len(choices), group[i], admitted.prompts[start], body, group[0].finished))
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
        offsets = [len(prompt) if body.echo else 0 for prompt in admitted.prompts]
        chunks = OpenAIChunks(completion_id, created, name, body.logprobs, offsets)
        ends: dict[int, Finished] = {}
        async for event in choice_events(admitted.queued, chunks, body.logprobs is not None, ends):
            yield event
        if failed(ends):
            return
        ordered = [ends[i] for i in sorted(ends)]
        log_completion(admitted, "/v1/completions", ordered)
        if body.include_usage:
            yield chunk([], usage(ordered, body.n))
        yield ServerSentEvent(raw_data="[DONE]")
    finally:
        log_if_left(admitted)


def model_card(view: ModelView, status: str) -> dict[str, Any]:
    """What /v1/models says of a model; one not loaded since startup has no architecture yet."""
    info = view.info
    described: dict[str, Any] = {"id": view.name, "created": int(view.loaded_at), "loaded": status == "ready",
                                 "status": status}
    if info is None:
        return described | dict.fromkeys(("architecture", "parameters", "vocab_size", "context_length", "version"))
    return described | {"architecture": info.architecture, "parameters": info.parameters,
                        "vocab_size": len(info.chars), "context_length": info.context_length, "version": info.version}


@router.get("/models", response_model=ModelList, responses=OPENAI_LISTING)
async def list_models(state: Annotated[ServiceState, Depends(ready_service)]) -> ModelList:
    """Every model of the models directory: `loaded` says whether its engine runs (a model on standby
    loads at its first request); architecture, parameters, vocabulary, context and version once it
    has been loaded (`created` is when this version was loaded)."""
    models = state.models
    assert models is not None
    return ModelList(data=[ModelCard(**model_card(view, models.status(view)))
                           for _, view in sorted(models.views.items())])


@router.get("/models/{name}", response_model=ModelDetail, responses=OPENAI_MODEL)
async def model_detail(name: str, state: Annotated[ServiceState, Depends(ready_service)]) -> ModelDetail:
    """One model, with its model card's text (where it came from: corpus, training, samples); it is
    described without being loaded."""
    models = state.models
    assert models is not None
    view = models.views.get(name)
    if view is None:
        raise ServiceError(404, str(UnknownModelError(name, sorted(models.views))), param="name", kind="not_found",
                           code="model_not_found")
    return ModelDetail(**model_card(view, models.status(view)), card=await asyncio.to_thread(read_card, view.path))


def read_card(directory: Path) -> str | None:
    try:
        return (directory / CARD_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
