"""vLLM's tokenizer routes, over a character vocabulary: a character is a token."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from service.frontend.schemas.chat import MAX_MESSAGES, MAX_TEMPLATE_CHARS, ChatMessage, check_continuation
from service.frontend.schemas.common import StrictModel


class TokenizeRequest(StrictModel):
    """A prompt, or (as vLLM's) a conversation, rendered by the model's chat template first."""

    model: str | None = Field(None, description="model name (default: the server's default model)")
    prompt: str | None = Field(None, description="the text; or send messages")
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES,
                                               description="a conversation, as /v1/chat/completions takes it")
    add_generation_prompt: bool = Field(True, description="with messages: as /v1/chat/completions")
    continue_final_message: bool = Field(False, description="with messages: as /v1/chat/completions")
    chat_template: str | None = Field(None, max_length=MAX_TEMPLATE_CHARS,
                                      description="with messages: as /v1/chat/completions")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="with messages: as /v1/chat/completions")
    add_special_tokens: bool = Field(True, description="accepted for compatibility: a character model has none")
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send a prompt or messages (one of them)")
        check_continuation(self.messages or [], self.add_generation_prompt, self.continue_final_message)
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None = Field(description="the model's context in characters; null: unbounded")
    tokens: list[int]
    token_strs: list[str] | None = None
    prompt: str | None = Field(None, description="for messages: the prompt their chat template rendered, which "
                               "the model sees")


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
    chat_template: str | None = Field(None, description="the Jinja chat template /v1/chat/completions renders "
                                      "this model's conversations with; null: none")
