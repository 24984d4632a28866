"""vLLM's tokenizer routes, over a character vocabulary: a character is a token."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.frontend.schemas.common import StrictModel


class TokenizeRequest(StrictModel):
    model: str | None = Field(None, description="model name (default: the server's default model)")
    prompt: str
    add_special_tokens: bool = Field(True, description="accepted for compatibility: a character model has none")
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None = Field(description="the model's context in characters; null: unbounded")
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    tokenizer_class: str = "CharacterVocabulary"
    model: str
    vocab_size: int
    model_max_length: int | None
    chars: list[str] = Field(description="the vocabulary: a character's id is its position")
    eos_token: None = Field(None, description="a character model has no special tokens: a grammar or the length "
                                              "ends a text")
    bos_token: None = None
    pad_token: None = None
    unk_token: None = None
    chat_template: None = None
