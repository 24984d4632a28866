"""`POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info` in vLLM's shapes, so that evaluation
tools that ask the server for its tokenizer (lm-evaluation-harness's `local-completions`) need no
tokenizer files: a model's characters are its tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from charlm.vocab import UnknownCharactersError
from service.control.model_entry import ModelEntry
from service.frontend.errors import ServiceError
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


def loaded(state: ServiceState, name: str | None) -> ModelEntry:
    entry = state.model(name)
    assert entry.loaded is not None
    return entry


@router.post("/tokenize", response_model=TokenizeResponse, responses=TGI_GENERATION)
async def tokenize(body: TokenizeRequest, state: Annotated[ServiceState, Depends(ready_service)]) -> TokenizeResponse:
    """The prompt's character ids (422 naming the characters outside the model's vocabulary)."""
    entry = loaded(state, body.model)
    assert entry.loaded is not None
    try:
        ids = entry.loaded.vocab.encode(body.prompt).tolist()
    except UnknownCharactersError as exc:
        raise ServiceError(422, f"prompt: {exc}", param="prompt", kind="unknown_characters") from None
    return TokenizeResponse(count=len(ids), max_model_len=entry.loaded.model.context_size, tokens=ids,
                            token_strs=list(body.prompt) if body.return_token_strs else None)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=TGI_GENERATION)
async def detokenize(body: DetokenizeRequest,
                     state: Annotated[ServiceState, Depends(ready_service)]) -> DetokenizeResponse:
    """The text of character ids (422 naming ids outside the vocabulary)."""
    entry = loaded(state, body.model)
    assert entry.loaded is not None
    chars = entry.loaded.vocab.chars
    outside = sorted({i for i in body.tokens if not 0 <= i < len(chars)})
    if outside:
        raise ServiceError(422, f"tokens: id(s) {outside[:10]} outside the vocabulary of model {entry.name} "
                           f"(ids 0 to {len(chars) - 1})", param="tokens", kind="unknown_characters")
    return DetokenizeResponse(prompt="".join(chars[i] for i in body.tokens))


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=TGI_GENERATION)
async def tokenizer_info(state: Annotated[ServiceState, Depends(ready_service)],
                         model: str | None = None) -> TokenizerInfo:
    """A model's vocabulary (default model unless `?model=` names one); it has no special tokens."""
    entry = loaded(state, model)
    assert entry.loaded is not None
    vocab = entry.loaded.vocab
    return TokenizerInfo(model=entry.name, vocab_size=len(vocab), model_max_length=entry.loaded.model.context_size,
                         chars=vocab.chars)
