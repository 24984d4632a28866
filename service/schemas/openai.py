"""OpenAI completions wire format (`/v1/completions`, `/v1/models`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from charlm.sampling import MAX_SEED, MAX_TOP_K, SamplingParams
from service.schemas.common import StrictModel, check_stop, require_neutral

MAX_LOGPROBS = 5  # as OpenAI allows
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None,),
    "presence_penalty": (None, 0.0),
    "frequency_penalty": (None, 0.0),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
}


class StreamOptions(StrictModel):
    include_usage: bool = False


class CompletionRequest(StrictModel):
    model: str | None = Field(None, description="model name (default: the server's default model)")
    prompt: str | list[str] = Field("", description="a prompt or a list of prompts (not token ids)")
    max_tokens: int | None = Field(16, ge=0, description="characters to generate per choice")
    temperature: float | None = Field(1.0, ge=0, allow_inf_nan=False, description="0 is greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(0, ge=0, le=MAX_TOP_K, description="charlm extension; 0: off")
    n: int = Field(1, ge=1, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives to report per step")
    echo: bool = Field(False, description="prepend the prompt to each choice's text")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    user: str | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> list[str]:
        return check_stop([stop] if isinstance(stop, str) else list(stop or []))

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> CompletionRequest:
        require_neutral(self.model_dump(), NEUTRAL)
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def sampling(self) -> SamplingParams:
        temperature = 1.0 if self.temperature is None else self.temperature
        return SamplingParams(temperature, self.top_k or 0, self.top_p or 1.0, self.seed)


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "charlm"
    architecture: str
    parameters: int
    vocab_size: int
    context_length: int | None = Field(description="characters the model attends to; null: unbounded")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

