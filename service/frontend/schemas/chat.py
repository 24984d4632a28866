"""OpenAI chat completions wire format (`/v1/chat/completions`), with vLLM's chat template fields.

Every field of OpenAI's chat schema is known: those charlm cannot honour are accepted at the value
that changes nothing (what clients send by default) and refused by name otherwise. A field outside
the schema is refused too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from service.frontend.schemas.common import MAX_TOP_N, StrictModel, require_neutral
from service.frontend.schemas.openai import SamplingRequest, Usage

MAX_TOP_LOGPROBS = MAX_TOP_N  # OpenAI allows 20; the engine reports at most 10 alternatives
MAX_TEMPLATE_CHARS = 65_536  # a request's own chat template (compiling a long one takes seconds)
MAX_MESSAGES = 1024
MAX_NAME_CHARS = 64
TEXT_PARTS = {"text": "text", "refusal": "refusal"}  # a part's type -> the key holding its text
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None, "none"),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "verbosity": (None, "medium"),
    "web_search_options": (None,),
    "prompt_cache_retention": (None, "in_memory"),
}
NO_TOOLS = "charlm's models cannot call tools or functions"


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = Field(
        None, description="text, a list of text parts (joined by newlines), or null")
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS,
                             description="who speaks; a template may use it (the play's speaker)")
    tool_calls: list[dict[str, Any]] | None = Field(None, description="accepted empty: no model here calls tools")
    tool_call_id: str | None = None
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = Field(None, description="accepted and ignored: an assistant "
                                                     "message as the openai client sends it back")
    audio: None = None
    function_call: None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        for i, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type")
            key = TEXT_PARTS.get(kind) if isinstance(kind, str) else None
            if key is None:
                raise ValueError(f"part {i} is of type {kind!r}: charlm's models read text only (type 'text')")
            if not isinstance(part.get(key), str):
                raise ValueError(f"part {i} ({kind}) needs its text as a string in {key!r}")
        return content

    @field_validator("name")
    @classmethod
    def _one_line(cls, name: str | None) -> str | None:
        if name is not None and any(c in name for c in "\r\n"):
            raise ValueError("a name is one line: it must not hold a line break")
        return name

    @model_validator(mode="after")
    def _no_tool_calls(self) -> ChatMessage:
        if self.tool_calls:
            raise ValueError(f"tool_calls: {NO_TOOLS}")
        return self

    @property
    def text(self) -> str:
        """The content as one text: parts joined by newlines, null as empty."""
        if isinstance(self.content, list):
            return "\n".join(part[TEXT_PARTS[part["type"]]] for part in self.content)
        return self.content or ""

    def for_template(self) -> dict[str, Any]:
        """The message as templates read it (Hugging Face's shape: content as a string)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def check_continuation(messages: list[ChatMessage], add_generation_prompt: bool, continue_final_message: bool) -> None:
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be true: the reply "
                         "either continues the last message or begins a new one (send add_generation_prompt "
                         "false)")
    if continue_final_message and messages and messages[-1].role != "assistant":
        raise ValueError("continue_final_message continues the assistant's last message: the last message "
                         f"is the {messages[-1].role}'s")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool | None = Field(None, description="each generated character's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per character "
                                     "(needs logprobs)")
    tools: list[dict[str, Any]] | None = Field(None, description="accepted and ignored without tool_choice")
    tool_choice: str | dict[str, Any] | None = Field(None, description="absent or 'none' only")
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = Field(None, description="accepted and ignored without function_call")
    function_call: str | dict[str, Any] | None = Field(None, description="absent or 'none' only")
    metadata: dict[str, str] | None = None
    store: bool | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    echo: bool = Field(False, description="vLLM's: the reply starts with the last message's text when that "
                       "message is the assistant's")
    add_generation_prompt: bool = Field(True, description="vLLM's: end the prompt where the assistant speaks next")
    continue_final_message: bool = Field(False, description="vLLM's: leave the last message open, so the reply "
                                         "continues it (needs add_generation_prompt false)")
    add_special_tokens: bool = Field(False, description="accepted for compatibility: a character model has none")
    chat_template: str | None = Field(None, max_length=MAX_TEMPLATE_CHARS, description="a Jinja template for this "
                                      "request (refused unless the server trusts request templates)")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="extra variables for the template, such as "
                                                        "the play's user_name and assistant_name")

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatCompletionRequest:
        require_neutral({name: getattr(self, name) for name in NEUTRAL}, NEUTRAL)
        if self.tool_choice not in (None, "none"):
            raise ValueError(f"tool_choice: {NO_TOOLS}; send it as 'none' or leave it out")
        if self.function_call not in (None, "none"):
            raise ValueError(f"function_call: {NO_TOOLS}; send it as 'none' or leave it out")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        check_continuation(self.messages, self.add_generation_prompt, self.continue_final_message)
        return self

    @property
    def top_n(self) -> int:
        return self.top_logprobs or 0 if self.logprobs else 0

    @property
    def echoed(self) -> str:
        """What echo puts before the reply: the last message's text, when it is the assistant's."""
        last = self.messages[-1]
        return last.text if self.echo and last.role == "assistant" else ""


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None
    annotations: list[Any] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    service_tier: str | None = None
