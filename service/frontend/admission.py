"""Turning a validated request into queued sequences: limits, model, prompts, then the engine."""

from __future__ import annotations

import dataclasses
import logging
import time

from fastapi import Request

from service.engine.sequences import Finished
from service.frontend.errors import ServiceError
from service.frontend.generation import GenerationSpec, Queued, encode_prompt
from service.frontend.models import ModelView
from service.frontend.state import ServiceState, request_id

logger = logging.getLogger("service.requests")


@dataclasses.dataclass
class Admitted:
    """Sequences queued for one HTTP request, with what its response needs to know."""

    queued: Queued
    view: ModelView
    prompts: list[str]
    request_id: str
    logged: bool = False


async def admit(
    state: ServiceState, request: Request, model: str | None, prompts: list[str], spec: GenerationSpec,
    prompt_param: str, tokens_param: str, seed_offsets: list[int] | None = None,
) -> Admitted:
    """Check limits and prompts, then queue every sequence (or none: 429)."""
    settings = state.settings
    if not prompts:
        raise ServiceError(422, "no prompt given", param=prompt_param)
    if len(prompts) > settings.max_n:
        raise ServiceError(422, f"{len(prompts)} sequences requested; the limit is {settings.max_n}",
                           param=prompt_param)
    if spec.max_new_tokens > settings.max_new_tokens:
        raise ServiceError(422, f"{tokens_param} {spec.max_new_tokens} exceeds the limit of "
                           f"{settings.max_new_tokens}", param=tokens_param)
    view, client = await state.model(model)
    assert view.info is not None
    vocab_size = len(view.info.chars)
    outside = sorted(i for i, _ in spec.params.logit_bias if i >= vocab_size)
    if outside:
        raise ServiceError(422, f"logit_bias names character id(s) {outside} outside the vocabulary of model "
                           f"{view.name} (ids 0 to {vocab_size - 1})", param="logit_bias",
                           kind="unknown_characters")  # like a prompt's: 422 in both protocols
    ids = [encode_prompt(view.info.vocab, prompt, settings.max_prompt_chars, prompt_param) for prompt in prompts]
    # The time limit counts from the request's arrival: waiting for its model's engine to start is in it.
    started_at = getattr(request.state, "started_at", time.monotonic())
    timeout_s = max(0.0, settings.request_timeout_s - (time.monotonic() - started_at))
    queued = Queued(client, view, ids, spec, request_id(request), timeout_s, state.pacer, seed_offsets)
    await queued.submit()
    request.state.model_version = (view.name, view.version or "")  # headers of the response (the middleware)
    return Admitted(queued, view, prompts, request_id(request))


def log_completion(admitted: Admitted, route: str, ends: list[Finished]) -> None:
    """One line per request: id, model, characters and timings."""
    admitted.logged = True
    first = [e.first_char_s for e in ends if e.first_char_s is not None]
    logger.info(
        "request %s %s model=%s sequences=%d chars=%d finish=%s first_char_ms=%s total_ms=%.1f",
        admitted.request_id, route, admitted.view.name, len(ends), sum(e.generated_tokens for e in ends),
        ",".join(sorted({e.reason.value for e in ends})),
        f"{min(first) * 1000:.1f}" if first else "-", max((e.total_s for e in ends), default=0.0) * 1000,
    )


def log_if_left(admitted: Admitted) -> None:
    """At the end of a stream: a line if the client left before its end was logged."""
    if not admitted.logged:
        logger.info("request %s model=%s cancelled: the client went away", admitted.request_id, admitted.view.name)
