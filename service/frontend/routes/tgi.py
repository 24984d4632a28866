"""Hugging Face TGI routes: `POST /generate`, `POST /generate_stream` and `POST /`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import EventSourceResponse

from service.engine.sequences import Alternative, Finished, GeneratedToken
from service.engine.stopping import FinishReason
from service.frontend.admission import Admitted, admit, log_completion, log_if_left
from service.frontend.errors import ServiceError
from service.frontend.generation import ClientGone, GenerationSpec, SequenceResult, best_first, disconnect_of
from service.frontend.grammar import compile_grammar
from service.frontend.schemas.errors import TGI_GENERATION
from service.frontend.schemas.tgi import (
    DEFAULT_MAX_NEW_TOKENS,
    BestOfSequence,
    CompatGenerateRequest,
    Details,
    GenerateRequest,
    GenerateResponse,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
)
from service.frontend.sse import STREAM_RESPONSE, sse_response
from service.frontend.state import ServiceState, ready_service
from service.frontend.stream_text import KEEPALIVE, TGIText, data_event

router = APIRouter(tags=["TGI"])

FINISH_REASONS = {  # TGI's names where it has one
    FinishReason.LENGTH: "length",
    FinishReason.STOP: "stop_sequence",
    FinishReason.END: "eos_token",  # the grammar's text is complete: a character model's end of text
    FinishReason.TIMEOUT: "timeout",
    FinishReason.CANCELLED: "cancelled",
    FinishReason.ERROR: "error",
}
END_TOKEN = Token(id=-1, text="", logprob=0.0, special=True)  # carries the final stream event


async def admit_tgi(state: ServiceState, request: Request, body: GenerateRequest, stream: bool = False
                    ) -> Admitted:
    """One sequence per prompt, or `best_of` candidates each (candidate j draws with seed + j)."""
    p = body.parameters
    prompts = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    limits = state.settings
    if p.truncate is not None and p.truncate > limits.max_prompt_chars:  # as TGI refuses it
        raise ServiceError(422, f"parameters.truncate {p.truncate} exceeds the prompt limit of "
                           f"{limits.max_prompt_chars} characters", param="parameters.truncate")
    if p.truncate:
        prompts = [prompt[-p.truncate :] for prompt in prompts]
    candidates = p.best_of or 1
    if candidates > 1 and len(prompts) * candidates > limits.max_n:  # before building a list that long
        raise ServiceError(422, f"{len(prompts) * candidates} sequences requested (prompts x "
                           f"parameters.best_of); the limit is {limits.max_n}", param="parameters.best_of")
    if stream and candidates > 1:
        raise ServiceError(422, "parameters.best_of > 1 cannot stream: candidates are compared when they are done",
                           param="parameters.best_of")
    if stream and p.decoder_input_details:  # as TGI refuses it
        raise ServiceError(422, "parameters.decoder_input_details == true is not supported when streaming tokens",
                           param="parameters.decoder_input_details")
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if p.max_new_tokens is None else p.max_new_tokens
    interval = state.settings.stream_interval if stream else 0
    grammar = None
    if (form := p.grammar_form()) is not None:
        view, _ = await state.model(body.model)
        assert view.info is not None
        grammar = await compile_grammar(form, view.info.vocab, max_new_tokens, "parameters.max_new_tokens")
    scoring = 0 if p.details and p.decoder_input_details else None
    spec = GenerationSpec(max_new_tokens, p.sampling(), tuple(p.stop), p.top_n_tokens or 0, interval,
                          grammar=grammar, prompt_logprobs=scoring)
    expanded = [prompt for prompt in prompts for _ in range(candidates)]
    offsets = [j for _ in prompts for j in range(candidates)]
    return await admit(state, request, body.model, expanded, spec, "inputs", "parameters.max_new_tokens", offsets)


async def admit_tgi_stream(body: GenerateRequest, request: Request, state: ServiceState) -> Admitted:
    """Everything that can fail before a stream starts: validation, model, grammar, prompt, queue."""
    if isinstance(body.inputs, list):
        raise ServiceError(422, "a stream takes one prompt; send a string as inputs", param="inputs")
    return await admit_tgi(state, request, body, stream=True)


def token(t: GeneratedToken | Alternative) -> Token:
    return Token(id=t.id, text=t.text, logprob=t.logprob)


def tgi_response(results: list[SequenceResult], body: GenerateRequest, prompt: str) -> GenerateResponse:
    """The answer for one prompt from its candidates: the one with the highest mean log-probability,
    the others in `details.best_of_sequences` (when there are others)."""
    for result in results:
        if result.finished.reason is FinishReason.ERROR:
            raise ServiceError(500, result.finished.error or "generation failed", kind="generation")
    best, *others = [results[i] for i in best_first(results)] if len(results) > 1 else results
    text = full_text(best, body, prompt)
    if not body.parameters.details:
        return GenerateResponse(generated_text=text)
    rest = [BestOfSequence(generated_text=full_text(r, body, prompt), **sequence_details(r, body)) for r in others]
    prefill = prefill_tokens(results[0].finished, prompt)  # the first candidate scored the prompt
    return GenerateResponse(generated_text=text, details=Details(**sequence_details(best, body), prefill=prefill,
                                                                 best_of_sequences=rest or None))


def prefill_tokens(end: Finished, prompt: str) -> list[PrefillToken]:
    """The prompt's characters with their log-probabilities (decoder_input_details), the first null;
    none for an empty prompt (the model starts from its start character)."""
    if not prompt or end.prompt_logprobs is None:
        return []
    return [PrefillToken(id=t.id, text=t.text, logprob=t.logprob) for t in end.prompt_logprobs]


def full_text(result: SequenceResult, body: GenerateRequest, prompt: str) -> str:
    return prompt + result.finished.text if body.parameters.return_full_text else result.finished.text


def sequence_details(result: SequenceResult, body: GenerateRequest) -> dict[str, Any]:
    end = result.finished
    top = [[token(a) for a in t.top] for t in result.tokens] if body.parameters.top_n_tokens else None
    return {"finish_reason": FINISH_REASONS[end.reason], "generated_tokens": end.generated_tokens, "seed": end.seed,
            "tokens": [token(t) for t in result.tokens], "top_tokens": top}


@router.post("/generate", response_model=GenerateResponse | list[GenerateResponse],
             responses=TGI_GENERATION)
async def generate(
    body: GenerateRequest, request: Request, state: Annotated[ServiceState, Depends(ready_service)]
) -> GenerateResponse | list[GenerateResponse] | Response:
    """Generate a continuation of `inputs` (or of each prompt in a list, batched together)."""
    admitted = await admit_tgi(state, request, body)
    try:
        results = await admitted.queued.results(disconnect_of(request.receive))
    except ClientGone:
        return Response(status_code=499)
    log_completion(admitted, "/generate", [r.finished for r in results])
    candidates = body.parameters.best_of or 1
    responses = [tgi_response(results[i : i + candidates], body, admitted.prompts[i])
                 for i in range(0, len(results), candidates)]
    return responses if isinstance(body.inputs, list) else responses[0]


@router.post("/generate_stream", responses={**STREAM_RESPONSE, **TGI_GENERATION})
async def generate_stream(
    body: GenerateRequest, request: Request, state: Annotated[ServiceState, Depends(ready_service)]
) -> EventSourceResponse:
    """Stream the continuation as Server-Sent Events, one per character; the last event carries
    `generated_text` and `details` on a special empty token."""
    admitted = await admit_tgi_stream(body, request, state)
    return sse_response(tgi_events(admitted, body, request), openai=False)


async def tgi_events(admitted: Admitted, body: GenerateRequest, request: Request) -> AsyncIterator[bytes]:
    """One event per character, all that are ready written together; the last event also carries
    `generated_text` and `details`."""
    queued = admitted.queued
    text = TGIText(queued.chars)
    written: list[int] = []  # every character id sent, for generated_text
    try:
        async for ready in queued.updates():
            if ready is None:
                yield KEEPALIVE
                continue
            (sequence,) = ready  # a TGI stream has one sequence
            if sequence.end is None and not body.parameters.top_n_tokens:  # the common case
                chunks, position = sequence.take()
                yield text.chunk_events(chunks, position, written).encode()
                continue
            tokens = queued.tokens(sequence)
            written += [t.id for t in tokens]
            if sequence.end is None:
                yield "".join(text.event(t) for t in tokens).encode()
            else:
                generated = "".join(queued.chars[i] for i in written)
                yield closing_events(admitted, body, text, tokens, dataclasses.replace(sequence.end, text=generated))
    finally:
        log_if_left(admitted)


def closing_events(admitted: Admitted, body: GenerateRequest, text: TGIText, tokens: list[GeneratedToken],
                   end: Finished) -> bytes:
    """A stream's last characters and its end: an error event, or the last character's event with
    the text and details."""
    log_completion(admitted, "/generate_stream", [end])
    if end.reason is FinishReason.ERROR:
        error = {"error": end.error or "generation failed", "error_type": "generation"}
        return ("".join(text.event(t) for t in tokens) + data_event(json.dumps(error))).encode()
    # The last character carries the end when it is the end (the length or the grammar reached);
    # after a stop string, a timeout or a cancellation, a special empty token does.
    last = tokens[-1] if tokens and end.reason in (FinishReason.LENGTH, FinishReason.END) else None
    shown = tokens[:-1] if last is not None else tokens
    return ("".join(text.event(t) for t in shown) + closing_event(last, end, admitted.prompts[0], body)).encode()


def closing_event(last: GeneratedToken | None, end: Finished, prompt: str, body: GenerateRequest) -> str:
    """The last character's event, with the text and details. When the stream ended without a
    character in its final step (a stop string matched, or time ran out), a special empty token
    carries them instead. Once per stream: built with the schema."""
    text = prompt + end.text if body.parameters.return_full_text else end.text
    details = StreamDetails(finish_reason=FINISH_REASONS[end.reason], generated_tokens=end.generated_tokens,
                            seed=end.seed, input_length=len(prompt))
    if last is None:
        response = StreamResponse(index=end.generated_tokens + 1, token=END_TOKEN, generated_text=text, details=details)
    else:
        top = [token(a) for a in last.top] if last.top else None
        response = StreamResponse(index=last.position, token=token(last), top_tokens=top, generated_text=text,
                                  details=details)
    return data_event(response.model_dump_json())


@router.post("/", response_model=list[GenerateResponse],
             responses={**STREAM_RESPONSE, **TGI_GENERATION})
async def compat_generate(
    body: CompatGenerateRequest, request: Request, state: Annotated[ServiceState, Depends(ready_service)]
) -> Response | list[GenerateResponse]:
    """TGI's base route: `stream: false` answers a one-element list, `stream: true` streams."""
    if body.stream:
        admitted = await admit_tgi_stream(body, request, state)
        return sse_response(tgi_events(admitted, body, request), openai=False)
    answer = await generate(body, request, state)
    if isinstance(answer, Response):
        return answer
    return answer if isinstance(answer, list) else [answer]
