"""Turning a validated request into queued sequences: limits, model, prompts, then the engine."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi import Request

from service.control.model_entry import ModelEntry
from service.engine.sequences import Finished
from service.frontend.errors import ServiceError
from service.frontend.generation import GenerationSpec, Submission, encode_prompt
from service.frontend.state import ServiceState, request_id

logger = logging.getLogger("service.requests")
T = TypeVar("T")


@dataclasses.dataclass
class Admitted:
    """Sequences queued for one HTTP request, with what its response needs to know."""

    submission: Submission
    entry: ModelEntry
    prompts: list[str]
    request_id: str
    logged: bool = False


def admit(
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
    entry = state.model(model)
    assert entry.loaded is not None
    vocab_size = len(entry.loaded.vocab)
    outside = sorted(i for i, _ in spec.params.logit_bias if i >= vocab_size)
    if outside:
        raise ServiceError(422, f"logit_bias names character id(s) {outside} outside the vocabulary of model "
                           f"{entry.name} (ids 0 to {vocab_size - 1})", param="logit_bias",
                           kind="unknown_characters")  # like a prompt's: 422 in both protocols
    ids = [encode_prompt(entry, prompt, settings, prompt_param) for prompt in prompts]
    assert entry.engine is not None and state.mailbox is not None
    submission = Submission(entry.engine, ids, spec, request_id(request), settings.request_timeout_s,
                            state.mailbox, seed_offsets)
    submission.submit()
    request.state.model_version = (entry.name, entry.version or "")  # headers of the response (the middleware)
    return Admitted(submission, entry, prompts, request_id(request))


def log_completion(admitted: Admitted, route: str, ends: list[Finished]) -> None:
    """One line per request: id, model, characters and timings."""
    admitted.logged = True
    first = [e.first_char_s for e in ends if e.first_char_s is not None]
    logger.info(
        "request %s %s model=%s sequences=%d chars=%d finish=%s first_char_ms=%s total_ms=%.1f",
        admitted.request_id, route, admitted.entry.name, len(ends), sum(e.generated_tokens for e in ends),
        ",".join(sorted({e.reason.value for e in ends})),
        f"{min(first) * 1000:.1f}" if first else "-", max((e.total_s for e in ends), default=0.0) * 1000,
    )


async def logged(admitted: Admitted, events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Pass a stream's events through; log a line if the client leaves before the end."""
    try:
        async for event in events:
            yield event
    finally:
        if not admitted.logged:
            logger.info("request %s model=%s cancelled: the client went away", admitted.request_id,
                        admitted.entry.name)
