"""`POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info` in vLLM's shapes, so that evaluation
tools that ask the server for its tokenizer (lm-evaluation-harness's `local-completions`) need no
tokenizer files: a model's characters are its tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from charlm.chat_template import ChatTemplateError
from charlm.vocab import UnknownCharactersError
from service.engine.specs import ModelInfo
from service.frontend.errors import ServiceError
from service.frontend.generation import text_of_ids
from service.frontend.models import ModelView
from service.frontend.schemas.errors import TGI_GENERATION
from service.frontend.schemas.tokenizer import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from service.frontend.state import ServiceState, ready_service

router = APIRouter(tags=["tokenizer"])


async def described(state: ServiceState, name: str | None) -> tuple[ModelView, ModelInfo]:
    """The ready model and what the front end knows of it (404 naming the ones that exist)."""
    view, _ = await state.model(name)
    assert view.info is not None
    return view, view.info


@router.post("/tokenize", response_model=TokenizeResponse, responses=TGI_GENERATION)
async def tokenize(body: TokenizeRequest, state: Annotated[ServiceState, Depends(ready_service)]) -> TokenizeResponse:
    """The prompt's character ids (422 naming the characters outside the model's vocabulary); for
    messages, those of the prompt the model's chat template renders, which is returned too."""
    view, info = await described(state, body.model)
    rendered = await state.chat_templates.render(view, body.messages, body) if body.messages else None
    prompt = rendered.text if rendered is not None else body.prompt or ""
    try:
        ids = info.vocab.encode(prompt).tolist()
    except UnknownCharactersError as exc:
        param = "prompt" if rendered is None else "messages"
        raise ServiceError(422, f"{param}: {exc}", param=param, kind="unknown_characters") from None
    return TokenizeResponse(count=len(ids), max_model_len=info.context_length, tokens=ids,
                            token_strs=list(prompt) if body.return_token_strs else None,
                            prompt=prompt if rendered is not None else None)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=TGI_GENERATION)
async def detokenize(body: DetokenizeRequest,
                     state: Annotated[ServiceState, Depends(ready_service)]) -> DetokenizeResponse:
    """The text of character ids (422 naming ids outside the vocabulary)."""
    view, info = await described(state, body.model)
    return DetokenizeResponse(prompt=text_of_ids(body.tokens, info.chars, view.name, "tokens", "tokens: id(s)"))


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=TGI_GENERATION)
async def tokenizer_info(state: Annotated[ServiceState, Depends(ready_service)],
                         model: str | None = None) -> TokenizerInfo:
    """A model's vocabulary (default model unless `?model=` names one); it has no special tokens."""
    view, info = await described(state, model)
    try:
        template = state.chat_templates.of_model(view.path)
    except ChatTemplateError:
        template = None  # /v1/chat/completions says why
    return TokenizerInfo(model=view.name, vocab_size=len(info.chars), model_max_length=info.context_length,
                         chars=info.chars, chat_template=template.source if template is not None else None)
