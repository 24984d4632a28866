"""OpenAI's chat route: `POST /v1/chat/completions`.

The conversation becomes a prompt through the model's chat template (`service.frontend.chat_prompt`);
the reply is generated as a completion is, `n` choices drawing with seed + j, and answered in the
chat shapes: a message, or a stream of deltas."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import ServerSentEvent

from service.engine.sequences import Finished
from service.engine.stopping import FinishReason
from service.frontend.admission import Admitted, admit, log_completion, log_if_left
from service.frontend.choice_stream import choice_events, failed, finish_reason
from service.frontend.errors import ServiceError
from service.frontend.generation import ClientGone, GenerationSpec, SequenceResult, disconnect_of
from service.frontend.grammar import compile_grammar
from service.frontend.routes.openai import usage
from service.frontend.schemas.chat import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatReply,
    ChoiceLogprobs,
    TokenLogprob,
)
from service.frontend.schemas.errors import OPENAI_GENERATION
from service.frontend.sse import STREAM_RESPONSE, sse_response
from service.frontend.state import ServiceState, ready_service
from service.frontend.stream_text import ChatChunks, token_logprobs

router = APIRouter(prefix="/v1", tags=["OpenAI"])
DEFAULT_MAX_TOKENS = 1024  # a reply's length when the request sets none (a speech ends sooner, at its stop)
ROUTE = "/v1/chat/completions"


async def admit_chat(state: ServiceState, request: Request, body: ChatCompletionRequest) -> Admitted:
    """The conversation rendered by the model's template, then `n` sequences queued on its engine."""
    if body.n > state.settings.max_n:
        raise ServiceError(422, f"n is {body.n}; the limit is {state.settings.max_n}", param="n")
    view, _ = await state.model(body.model)
    assert view.info is not None
    prompt = await state.chat_templates.render(view, body.messages, body)
    max_tokens = body.max_new_tokens(min(DEFAULT_MAX_TOKENS, state.settings.max_new_tokens))
    form = body.grammar_form()
    grammar = await compile_grammar(form, view.info.vocab, max_tokens, body.tokens_param) if form else None
    # The model's default stop ends a reply, not a grammar's text (a choice may hold a blank line).
    stop = tuple(body.stop) if body.stop is not None else () if grammar is not None else prompt.stop
    interval = state.settings.stream_interval if body.stream else 0
    spec = GenerationSpec(max_tokens, body.sampling(), stop, body.top_n, interval, grammar=grammar)
    return await admit(state, request, view.name, [prompt.text] * body.n, spec, "messages", body.tokens_param,
                       list(range(body.n)))


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={**STREAM_RESPONSE, **OPENAI_GENERATION})
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: Annotated[ServiceState, Depends(ready_service)]
) -> ChatCompletion | Response:
    """The assistant's reply to a conversation (`n` choices); `stream: true` answers with
    Server-Sent Events of deltas. The model must have a chat template."""
    admitted = await admit_chat(state, request, body)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return sse_response(chat_events(admitted, body, completion_id, created), openai=True)
    try:
        results = await admitted.queued.results(disconnect_of(request.receive))
    except ClientGone:
        return Response(status_code=499)
    ends = [r.finished for r in results]
    log_completion(admitted, ROUTE, ends)
    choices = [chat_choice(index, result, body) for index, result in enumerate(results)]
    return ChatCompletion(id=completion_id, created=created, model=admitted.view.name, choices=choices,
                          usage=usage(ends, body.n))


def chat_choice(index: int, result: SequenceResult, body: ChatCompletionRequest) -> ChatChoice:
    end = result.finished
    if end.reason is FinishReason.ERROR:
        raise ServiceError(500, end.error or "generation failed", kind="generation")
    logprobs = None
    if body.logprobs:
        logprobs = ChoiceLogprobs(content=[TokenLogprob(**entry) for entry in token_logprobs(result.tokens)])
    return ChatChoice(index=index, message=ChatReply(content=body.echoed + end.text), logprobs=logprobs,
                      finish_reason=finish_reason(end.reason))


async def chat_events(admitted: Admitted, body: ChatCompletionRequest, completion_id: str,
                      created: int) -> AsyncIterator[ServerSentEvent | bytes]:
    """Per choice a first chunk with the role (then the echo), then its characters as they come (those
    ready together in one chunk), then a chunk with its finish reason; usage when asked; `[DONE]`."""
    chunks = ChatChunks(completion_id, created, admitted.view.name, body.include_usage)
    try:
        opening = [chunks.role(index) for index in range(body.n)]
        if body.echoed:
            opening += [chunks.text(index, body.echoed) for index in range(body.n)]
        yield "".join(opening).encode()
        ends: dict[int, Finished] = {}
        async for event in choice_events(admitted.queued, chunks, bool(body.logprobs), ends):
            yield event
        if failed(ends):
            return
        ordered = [ends[i] for i in sorted(ends)]
        log_completion(admitted, ROUTE, ordered)
        if body.include_usage:
            final = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                     "model": admitted.view.name, "system_fingerprint": None, "choices": [],
                     "usage": usage(ordered, body.n).model_dump()}
            yield ServerSentEvent(data=final)
        yield ServerSentEvent(raw_data="[DONE]")
    finally:
        log_if_left(admitted)

